// Writes a str -> tensor dict in the zip-pickle format of `torch.save`, with libtorch's own
// serializer. The pickler is built with tag_aggregates = false: with the default tags
// (`torch.jit._pickle.restore_type_tag`) PyTorch >= 2.6's `torch.load(weights_only=True)`
// refuses the file (REFERENCE.md §6).
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickler.h>

#include <cstring>
#include <exception>
#include <string>
#include <vector>

extern "C" int dit_write_pth(const char* path, const char* const* names,
                             const at::Tensor* const* tensors, size_t count, char* err,
                             size_t err_len) {
  try {
    c10::Dict<std::string, at::Tensor> dict;
    for (size_t i = 0; i < count; ++i) {
      dict.insert(names[i], *tensors[i]);
    }
    std::vector<char> bytes;
    std::vector<at::Tensor> tensor_table;
    torch::jit::Pickler pickler(
        [&](const char* buf, size_t len) { bytes.insert(bytes.end(), buf, buf + len); },
        &tensor_table, nullptr, nullptr, nullptr, /*tag_aggregates=*/false);
    pickler.protocol();
    pickler.pushIValue(c10::IValue(dict));
    pickler.stop();
    caffe2::serialize::PyTorchStreamWriter writer{std::string(path)};
    torch::jit::writeArchiveAndTensors("data", bytes.data(), bytes.size(), tensor_table, writer);
    writer.writeEndOfFile();
    return 0;
  } catch (const std::exception& e) {
    // Keep the first line: libtorch appends a C++ backtrace after it.
    std::string msg(e.what());
    msg = msg.substr(0, msg.find('\n'));
    if (err_len > 0) {
      std::strncpy(err, msg.c_str(), err_len - 1);
      err[err_len - 1] = '\0';
    }
    return 1;
  }
}
