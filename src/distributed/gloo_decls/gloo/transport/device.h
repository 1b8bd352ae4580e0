// Names only (held by smart pointers in ProcessGroupGloo.hpp); see ../../README.md.
#pragma once

namespace gloo {
namespace transport {
class Device;
class UnboundBuffer;
}  // namespace transport
}  // namespace gloo
