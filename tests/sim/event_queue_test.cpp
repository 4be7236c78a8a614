#include "sim/event_queue.h"

#include <gtest/gtest.h>

namespace computron::sim {
namespace {

TEST(EventQueue, OrdersByTimeThenBySchedulingOrder) {
  EventQueue q;
  q.push(30, EventKind::kBatchDone, 1);
  q.push(10, EventKind::kArrival, 2);
  q.push(20, EventKind::kLoadDone, 3);
  q.push(10, EventKind::kEvictDone, 4);  // same time as #2, scheduled later: fires after it
  q.push(10, EventKind::kLinkCheck, 5);
  std::vector<std::uint64_t> order;
  std::vector<Nanos> times;
  while (!q.empty()) {
    Event e = q.pop();
    order.push_back(e.a);
    times.push_back(e.time);
  }
  EXPECT_EQ(order, (std::vector<std::uint64_t>{2, 4, 5, 3, 1}));
  EXPECT_EQ(times, (std::vector<Nanos>{10, 10, 10, 20, 30}));
}

TEST(EventQueue, TiesBreakTheSameWayEveryRun) {
  for (int run = 0; run < 3; ++run) {
    EventQueue q;
    for (std::uint64_t i = 0; i < 1000; ++i) q.push(static_cast<Nanos>(i % 7), EventKind::kArrival, i);
    Nanos last_time = -1;
    std::uint64_t last_payload = 0;
    while (!q.empty()) {
      Event e = q.pop();
      if (e.time == last_time) {
        EXPECT_GT(e.a, last_payload);  // insertion order within a tie
      }
      EXPECT_GE(e.time, last_time);
      last_time = e.time;
      last_payload = e.a;
    }
  }
}

}  // namespace
}  // namespace computron::sim
