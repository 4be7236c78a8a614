// The message of the ConfigError that `f` throws (what a test asserts on: the JSON path, the
// option, the file), or `if_none` when it throws none.
#pragma once

#include <string>
#include <utility>

#include "common/types.h"

namespace computron::fakes {

template <typename F>
std::string configErrorOf(F&& f, const std::string& if_none = "") {
  try {
    std::forward<F>(f)();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return if_none;
}

}  // namespace computron::fakes
