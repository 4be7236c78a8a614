#include "common/scenario/interrupt.h"

#include <csignal>

namespace computron {
namespace {

StopFlag g_own_stop_signal = 0;
// Set before any handler is installed (or by the module's entry point, before its command runs).
StopFlag* g_stop_signal = &g_own_stop_signal;

extern "C" void onStopSignal(int signal) { *g_stop_signal = signal; }

class StoppableSource final : public RequestSource {
 public:
  explicit StoppableSource(std::unique_ptr<RequestSource> inner) : inner_(std::move(inner)) {}
  std::optional<Request> next() override { return stopRequested() ? std::nullopt : inner_->next(); }
  bool exhausted() const override { return stopRequested() || inner_->exhausted(); }
  void onRequestDone(const Request& request, Nanos finish) override { inner_->onRequestDone(request, finish); }

 private:
  std::unique_ptr<RequestSource> inner_;
};

}  // namespace

void installStopHandlers() {
  struct sigaction action {};
  action.sa_handler = onStopSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESETHAND;  // a second signal takes the default action
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

bool stopRequested() { return *g_stop_signal != 0; }
int stopSignal() { return static_cast<int>(*g_stop_signal); }
void requestStop(int signal) { *g_stop_signal = signal; }
StopFlag* stopFlag() { return g_stop_signal; }
void shareStopFlag(StopFlag* flag) { g_stop_signal = flag != nullptr ? flag : &g_own_stop_signal; }

std::unique_ptr<RequestSource> stoppable(std::unique_ptr<RequestSource> source) {
  return std::make_unique<StoppableSource>(std::move(source));
}

}  // namespace computron
