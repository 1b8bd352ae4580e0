// The one error convention of the project's extern "C" functions: run the body, return 0; on
// any C++ exception, std::exception or not, return 1 with the first line of its message in
// `err` (libtorch appends a backtrace after it). No exception may cross into Rust: unwinding
// through an extern "C" frame aborts the process.
#pragma once

#include <cstddef>
#include <cstring>
#include <exception>
#include <string>

template <class F>
int dit_guarded(char* err, size_t err_len, F&& body) {
  std::string msg;
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    msg = e.what();
  } catch (...) {
    msg = "unknown C++ exception";
  }
  msg = msg.substr(0, msg.find('\n'));
  if (msg.empty()) msg = "C++ exception without a message";
  if (err != nullptr && err_len > 0) {
    std::strncpy(err, msg.c_str(), err_len - 1);
    err[err_len - 1] = '\0';
  }
  return 1;
}
