// Writes a str -> tensor dict in the zip-pickle format of `torch.save`, with libtorch's own
// serializer. The pickler is built with tag_aggregates = false: with the default tags
// (`torch.jit._pickle.restore_type_tag`) PyTorch >= 2.6's `torch.load(weights_only=True)`
// refuses the file (docs/ORIGINAL.md §6).
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickler.h>

#include "ffi_guard.h"

#include <cstring>
#include <fstream>
#include <stdexcept>
#include <exception>
#include <string>
#include <vector>

extern "C" int dit_write_pth(const char* path, const char* const* names,
                             const at::Tensor* const* tensors, size_t count, char* err,
                             size_t err_len) {
  return dit_guarded(err, err_len, [&] {
    c10::Dict<std::string, at::Tensor> dict;
    for (size_t i = 0; i < count; ++i) {
      dict.insert(names[i], *tensors[i]);
    }
    std::vector<char> bytes;
    // No tensor table: tensors are pickled as torch.save does (_rebuild_tensor_v2 with a
    // persistent storage id), not as TorchScript's build_tensor_from_id, which
    // torch.load(weights_only=True) refuses.
    torch::jit::Pickler pickler(
        [&](const char* buf, size_t len) { bytes.insert(bytes.end(), buf, buf + len); },
        nullptr, nullptr, nullptr, nullptr, /*tag_aggregates=*/false);
    pickler.protocol();
    pickler.pushIValue(c10::IValue(dict));
    pickler.stop();
    std::ofstream file(path, std::ios::binary | std::ios::trunc);
    if (!file) throw std::runtime_error(std::string("cannot create ") + path);
    // The function-writer form names the archive "archive", as torch.save does for streams.
    caffe2::serialize::PyTorchStreamWriter writer([&](const void* buf, size_t len) -> size_t {
      file.write(static_cast<const char*>(buf), static_cast<std::streamsize>(len));
      return file ? len : 0;
    });
    torch::jit::writeArchiveAndTensors("data", bytes.data(), bytes.size(), pickler.tensorData(),
                                       writer);
    writer.writeEndOfFile();
    file.close();
    if (!file) throw std::runtime_error(std::string("cannot write ") + path);
  });
}
