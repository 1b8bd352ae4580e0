// Declaration of the one gloo::Context member ProcessGroupGloo.hpp names; see ../README.md.
#pragma once
#include <chrono>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
}  // namespace gloo
