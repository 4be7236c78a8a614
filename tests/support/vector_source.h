// A request stream fixed in advance (open loop): the requests in the order given, each at its own
// arrival time.
#pragma once

#include <cstddef>
#include <optional>
#include <utility>
#include <vector>

#include "common/workload.h"

namespace computron::fakes {

class VectorSource final : public RequestSource {
 public:
  explicit VectorSource(std::vector<Request> requests) : requests_(std::move(requests)) {}
  std::optional<Request> next() override {
    if (next_ >= requests_.size()) return std::nullopt;
    return requests_[next_++];
  }
  bool exhausted() const override { return next_ >= requests_.size(); }

 private:
  std::vector<Request> requests_;
  std::size_t next_ = 0;
};

}  // namespace computron::fakes
