// Discrete-event queue: a binary heap keyed by (time, sequence). The sequence number is the order
// of scheduling, so events at the same time fire in the order they were scheduled, every run.
#pragma once

#include <cstdint>
#include <queue>
#include <vector>

#include "common/types.h"

namespace computron::sim {

enum class EventKind : std::uint8_t { kArrival, kLinkCheck, kLoadDone, kEvictDone, kBatchDone, kWake, kStepDone, kLoadStart };

struct Event {
  Nanos time = 0;
  std::uint64_t seq = 0;
  EventKind kind = EventKind::kArrival;
  std::uint64_t a = 0;  // payload: op id, batch id, generation...
};

class EventQueue {
 public:
  void push(Nanos time, EventKind kind, std::uint64_t a = 0) { heap_.push(Event{time, next_seq_++, kind, a}); }
  bool empty() const { return heap_.empty(); }
  std::size_t size() const { return heap_.size(); }
  const Event& top() const { return heap_.top(); }
  Event pop() {
    Event e = heap_.top();
    heap_.pop();
    return e;
  }
  std::uint64_t scheduled() const { return next_seq_; }

 private:
  struct Later {
    bool operator()(const Event& x, const Event& y) const {
      return x.time != y.time ? x.time > y.time : x.seq > y.seq;
    }
  };
  std::priority_queue<Event, std::vector<Event>, Later> heap_;
  std::uint64_t next_seq_ = 0;
};

}  // namespace computron::sim
