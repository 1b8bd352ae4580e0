// extern "C" access to libtorch's c10d for src/distributed: the rendezvous store (TCPStore
// behind a PrefixStore), a process group (Gloo, or NCCL through nccl_shim.cpp), bucketed
// collectives, and DDP's gradient Reducer. Tensors arrive as at::Tensor pointers (tch's
// C_tensor). Every function returns 0, or 1 with the first line of the C++ exception's
// message in `err` (libtorch appends a backtrace after it).
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include "ffi_guard.h"

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

using std::chrono::milliseconds;

#ifdef DIT_WITH_NCCL
// nccl_shim.cpp: compiled only when the wheel has CUDA and the NCCL headers are present.
c10::intrusive_ptr<c10d::Backend> dit_make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                        int rank, int size, int device,
                                                        milliseconds timeout);
#endif

namespace {

std::vector<at::Tensor> tensors_of(const at::Tensor* const* ptrs, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*ptrs[i]);
  return out;
}

// Groups tensors (by index) into buckets of one dtype and device, each at most `cap` bytes
// unless a single tensor is larger, in the order given.
std::vector<std::vector<size_t>> buckets_of(const std::vector<at::Tensor>& ts, int64_t cap) {
  std::vector<std::vector<size_t>> buckets;
  std::vector<int64_t> bytes;
  for (size_t i = 0; i < ts.size(); ++i) {
    const auto& t = ts[i];
    TORCH_CHECK(t.defined(), "tensor ", i, " of the list is undefined");
    TORCH_CHECK(t.layout() == at::kStrided, "tensor ", i, " is not dense");
    const int64_t b = t.numel() * static_cast<int64_t>(t.element_size());
    bool placed = false;
    for (size_t k = 0; k < buckets.size() && !placed; ++k) {
      const auto& first = ts[buckets[k].front()];
      if (first.scalar_type() == t.scalar_type() && first.device() == t.device() &&
          bytes[k] + b <= cap) {
        buckets[k].push_back(i);
        bytes[k] += b;
        placed = true;
      }
    }
    if (!placed) {
      buckets.push_back({i});
      bytes.push_back(b);
    }
  }
  return buckets;
}

// One bucket's communication buffer: the tensor itself when the bucket holds one contiguous
// tensor, else a flat copy of all of them.
struct Flat {
  std::vector<at::Tensor> members;
  at::Tensor buffer;
  bool aliased = false;

  Flat(const std::vector<at::Tensor>& ts, const std::vector<size_t>& idx, bool fill) {
    for (size_t i : idx) members.push_back(ts[i]);
    if (members.size() == 1 && members[0].is_contiguous()) {
      buffer = members[0];
      aliased = true;
      return;
    }
    int64_t n = 0;
    for (const auto& t : members) n += t.numel();
    buffer = at::empty({n}, members[0].options());
    if (fill) copy_in();
  }
  void copy_in() {
    int64_t off = 0;
    for (const auto& t : members) {
      buffer.narrow(0, off, t.numel()).copy_(t.reshape({-1}));
      off += t.numel();
    }
  }
  void copy_out() {
    if (aliased) return;
    int64_t off = 0;
    for (auto& t : members) {
      t.copy_(buffer.narrow(0, off, t.numel()).view(t.sizes()));
      off += t.numel();
    }
  }
};

milliseconds per_call(int64_t timeout_ms) {
  return timeout_ms > 0 ? milliseconds(timeout_ms) : c10d::kUnsetTimeout;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The store.

struct DitStore {
  c10::intrusive_ptr<c10d::Store> base;  // the TCPStore connection
  c10::intrusive_ptr<c10d::Store> store;  // `base` behind this run's key prefix
  std::string prefix;
};

// Connects to (or, with is_server, hosts) the TCPStore at host:port. With wait_workers every
// connection counts itself in, and the server waits until `world_size` have (itself included). Connecting
// and waiting give up after timeout_ms, which is also the timeout of later operations.
extern "C" int dit_store_new(const char* host, int port, int is_server, int world_size,
                             int wait_workers, int64_t timeout_ms, const char* prefix,
                             DitStore** out, char* err, size_t err_len) {
  return dit_guarded(err, err_len, [&] {
    c10d::TCPStoreOptions opts;
    TORCH_CHECK(port > 0 && port < 65536, "port ", port, " is out of range");
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = is_server != 0;
    if (world_size > 0) opts.numWorkers = static_cast<size_t>(world_size);
    opts.waitWorkers = wait_workers != 0;
    opts.timeout = milliseconds(timeout_ms);
    auto base = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    auto s = std::make_unique<DitStore>();
    s->base = base;
    s->prefix = prefix;
    s->store = c10::make_intrusive<c10d::PrefixStore>(s->prefix, s->base);
    *out = s.release();
  });
}

// A second connection to the same store, with the same prefix (for a thread of its own).
extern "C" int dit_store_clone(DitStore* s, DitStore** out, char* err, size_t err_len) {
  return dit_guarded(err, err_len, [&] {
    auto c = std::make_unique<DitStore>();
    c->base = s->base->clone();
    c->prefix = s->prefix;
    c->store = c10::make_intrusive<c10d::PrefixStore>(c->prefix, c->base);
    *out = c.release();
  });
}

extern "C" int dit_store_set_timeout(DitStore* s, int64_t timeout_ms, char* err, size_t err_len) {
  return dit_guarded(err, err_len, [&] { s->store->setTimeout(milliseconds(timeout_ms)); });
}

// Atomically adds `delta` to the integer at `key` (created as 0) and returns the new value.
extern "C" int dit_store_add(DitStore* s, const char* key, int64_t delta, int64_t* value, char* err,
                             size_t err_len) {
  return dit_guarded(err, err_len, [&] { *value = s->store->add(key, delta); });
}

extern "C" int dit_store_set(DitStore* s, const char* key, const uint8_t* data, size_t len,
                             char* err, size_t err_len) {
  return dit_guarded(err, err_len, [&] { s->store->set(key, std::vector<uint8_t>(data, data + len)); });
}

extern "C" void dit_store_free(DitStore* s) { delete s; }

// 1 when nccl_shim.cpp was compiled in (build.rs found the CUDA and NCCL headers), else 0.
extern "C" int dit_nccl_compiled() {
#ifdef DIT_WITH_NCCL
  return 1;
#else
  return 0;
#endif
}

// ---------------------------------------------------------------------------------------------
// The process group.

struct DitPg {
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  at::Device device{at::kCPU};
  int rank = 0;
  int size = 1;
};

// backend: 0 = Gloo (CPU tensors), 1 = NCCL (tensors on cuda:`device`). timeout_ms bounds
// every collective (Gloo: each send/receive; a peer that closes its connections fails them
// at once).
extern "C" int dit_pg_new(DitStore* s, int rank, int size, int backend, int device,
                          int64_t timeout_ms, DitPg** out, char* err, size_t err_len) {
  return dit_guarded(err, err_len, [&] {
    const milliseconds timeout(timeout_ms);
    auto pg_store = c10::make_intrusive<c10d::PrefixStore>("pg", s->store);
    auto pg = c10::make_intrusive<c10d::ProcessGroup>(pg_store, rank, size);
    auto h = std::make_unique<DitPg>();
    h->rank = rank;
    h->size = size;
    if (backend == 0) {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      // As torch.distributed: GLOO_SOCKET_IFNAME (comma-separated) names the interfaces,
      // else the address the host name resolves to (loopback as a fallback).
      const char* ifnames = std::getenv("GLOO_SOCKET_IFNAME");
      if (ifnames != nullptr && *ifnames != '\0') {
        std::stringstream list(ifnames);
        std::string name;
        while (std::getline(list, name, ',')) {
          if (!name.empty()) opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
        }
      }
      if (opts->devices.empty()) opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(c10::make_intrusive<c10d::PrefixStore>("gloo", pg_store),
                                                              rank, size, opts);
      TORCH_CHECK(gloo->getBackendName() == "gloo" && gloo->getRank() == rank && gloo->getSize() == size,
                  "the Gloo backend does not report what it was built with (a header mismatch?)");
      gloo->setSequenceNumberForGroup();
      pg->setBackend(at::kCPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
      pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
      h->device = at::Device(at::kCPU);
    } else if (backend == 1) {
#ifdef DIT_WITH_NCCL
      auto nccl = dit_make_nccl_backend(c10::make_intrusive<c10d::PrefixStore>("nccl", pg_store), rank, size,
                                        device, timeout);
      pg->setBackend(at::kCUDA, c10d::ProcessGroup::BackendType::NCCL, nccl);
      pg->setDefaultBackend(c10d::ProcessGroup::BackendType::NCCL);
      h->device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device));
#else
      TORCH_CHECK(false, "the NCCL backend is not available: this build of dit was compiled without CUDA/NCCL headers");
#endif
    } else {
      TORCH_CHECK(false, "unknown backend ", backend);
    }
    h->pg = pg;
    *out = h.release();
  });
}

// Sums each tensor over all ranks, in place, then divides by the world size (op 0), or takes
// the maximum (op 1). Tensors are packed into buckets of at most bucket_bytes per dtype and
// device; all buckets are started before the first is waited for.
extern "C" int dit_pg_allreduce(DitPg* h, const at::Tensor* const* ptrs, size_t n, int op,
                                int64_t bucket_bytes, int64_t timeout_ms, char* err, size_t err_len) {
  return dit_guarded(err, err_len, [&] {
    // The results overwrite the tensors in place, parameters included: not an autograd op.
    at::NoGradGuard no_grad;
    auto ts = tensors_of(ptrs, n);
    std::vector<Flat> flats;
    for (const auto& idx : buckets_of(ts, bucket_bytes)) flats.emplace_back(ts, idx, true);
    if (op == 0) {
      for (const auto& f : flats)
        TORCH_CHECK(at::isFloatingType(f.buffer.scalar_type()), "a mean needs floating-point tensors, got ",
                    f.buffer.scalar_type());
    }
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& f : flats) {
      c10d::AllreduceOptions opts;
      opts.reduceOp = op == 0 ? c10d::ReduceOp::SUM : c10d::ReduceOp::MAX;
      opts.timeout = per_call(timeout_ms);
      std::vector<at::Tensor> one{f.buffer};
      works.push_back(h->pg->allreduce(one, opts));
    }
    for (size_t k = 0; k < flats.size(); ++k) {
      works[k]->wait();
      if (op == 0) flats[k].buffer.div_(h->size);
      flats[k].copy_out();
    }
  });
}

// Copies each tensor of rank `root` into the same tensor of every other rank, in buckets.
extern "C" int dit_pg_broadcast(DitPg* h, const at::Tensor* const* ptrs, size_t n, int root,
                                int64_t bucket_bytes, int64_t timeout_ms, char* err, size_t err_len) {
  return dit_guarded(err, err_len, [&] {
    // The results overwrite the tensors in place, parameters included: not an autograd op.
    at::NoGradGuard no_grad;
    TORCH_CHECK(root >= 0 && root < h->size, "root rank ", root, " is not in 0..", h->size - 1);
    auto ts = tensors_of(ptrs, n);
    const bool is_root = h->rank == root;
    std::vector<Flat> flats;
    for (const auto& idx : buckets_of(ts, bucket_bytes)) flats.emplace_back(ts, idx, is_root);
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& f : flats) {
      c10d::BroadcastOptions opts;
      opts.rootRank = root;
      opts.timeout = per_call(timeout_ms);
      std::vector<at::Tensor> one{f.buffer};
      works.push_back(h->pg->broadcast(one, opts));
    }
    for (size_t k = 0; k < flats.size(); ++k) {
      works[k]->wait();
      if (!is_root) flats[k].copy_out();
    }
  });
}

extern "C" int dit_pg_barrier(DitPg* h, int64_t timeout_ms, char* err, size_t err_len) {
  return dit_guarded(err, err_len, [&] {
    c10d::BarrierOptions opts;
    opts.timeout = per_call(timeout_ms);
    h->pg->barrier(opts)->wait();
  });
}

// Every rank contributes `n` u64 values; `out` (size × n) receives rank r's at r*n.
extern "C" int dit_pg_allgather_u64(DitPg* h, const uint64_t* values, size_t n, uint64_t* out,
                                    int64_t timeout_ms, char* err, size_t err_len) {
  return dit_guarded(err, err_len, [&] {
    const auto n64 = static_cast<int64_t>(n);
    auto cpu = at::empty({n64}, at::kLong);
    std::memcpy(cpu.data_ptr<int64_t>(), values, n * sizeof(uint64_t));
    std::vector<at::Tensor> input{cpu.to(h->device)};
    std::vector<std::vector<at::Tensor>> output(1);
    for (int r = 0; r < h->size; ++r) output[0].push_back(at::empty({n64}, input[0].options()));
    c10d::AllgatherOptions opts;
    opts.timeout = per_call(timeout_ms);
    h->pg->allgather(output, input, opts)->wait();
    for (int r = 0; r < h->size; ++r) {
      auto got = output[0][r].to(at::kCPU).contiguous();
      std::memcpy(out + static_cast<size_t>(r) * n, got.data_ptr<int64_t>(), n * sizeof(uint64_t));
    }
  });
}

extern "C" void dit_pg_free(DitPg* h) { delete h; }

// Leaves the process group's threads and connections to process exit: after a failed
// collective, Gloo's worker threads may still be blocked on a peer, so joining them (as
// the destructor does) could wait out the whole timeout.
extern "C" void dit_pg_leak(DitPg* h) {
  if (h == nullptr) return;
  new c10::intrusive_ptr<c10d::ProcessGroup>(h->pg);  // one reference never released
  delete h;
}

// ---------------------------------------------------------------------------------------------
// DDP's gradient Reducer: hooks on the parameters' gradient accumulators start the bucketed
// all-reduce of each bucket as soon as backward has produced it, and backward returns with
// every gradient averaged over the ranks.

struct DitReducer {
  std::unique_ptr<c10d::Reducer> reducer;
};

extern "C" int dit_reducer_new(DitPg* h, const at::Tensor* const* ptrs, size_t n, int64_t bucket_bytes,
                               int64_t first_bucket_bytes, DitReducer** out, char* err, size_t err_len) {
  return dit_guarded(err, err_len, [&] {
    auto params = tensors_of(ptrs, n);
    for (size_t i = 0; i < n; ++i)
      TORCH_CHECK(params[i].requires_grad(), "parameter ", i, " does not require a gradient");
    // As DistributedDataParallel without unused parameters: one bucket for the first
    // backward, rebuilt from the order gradients arrived in (rebuild_buckets) afterwards.
    std::vector<size_t> limits{std::numeric_limits<size_t>::max()};
    auto assignment = c10d::compute_bucket_assignment_by_size(params, limits, std::vector<bool>(n, false));
    auto indices = std::get<0>(assignment);
    std::reverse(indices.begin(), indices.end());
    auto r = std::make_unique<DitReducer>();
    r->reducer = std::make_unique<c10d::Reducer>(
        params, indices, h->pg, std::vector<bool>(n, false), bucket_bytes,
        /*find_unused_parameters=*/false, /*gradient_as_bucket_view=*/false,
        std::unordered_map<size_t, std::string>{}, first_bucket_bytes,
        /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false, std::vector<int64_t>{});
    *out = r.release();
  });
}

// Call once per step on every rank, before the backward pass whose gradients are to be
// averaged (the first call after the first step rebuilds the buckets: a collective).
extern "C" int dit_reducer_prepare(DitReducer* r, char* err, size_t err_len) {
  return dit_guarded(err, err_len, [&] {
    r->reducer->prepare_for_forward();
    r->reducer->rebuild_buckets();
    r->reducer->prepare_for_backward({});
  });
}

extern "C" void dit_reducer_free(DitReducer* r) {
  try {
    delete r;
  } catch (...) {
    // ~Reducer is noexcept(false); nothing useful to do at teardown.
  }
}
