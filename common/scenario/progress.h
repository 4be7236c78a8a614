// Progress of a long command (a simulation, a sweep) on stderr, never on stdout or into output
// files. On a terminal one line is redrawn in place (done/total, rate, ETA); elsewhere (a log, a
// pipe) a plain line is written every `line_interval_s` seconds, with no carriage returns, so a
// short run writes nothing. `--quiet` turns it off.
#pragma once

#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <string>

namespace computron {

class ProgressReporter {
 public:
  enum class Mode {
    kOff,       // nothing (--quiet)
    kTerminal,  // a line redrawn with '\r' at most every redraw_interval_s
    kLines,     // a plain line every line_interval_s
  };
  struct Options {
    std::string label;  // "sim", "sweep": starts every line
    std::string unit;   // what done and total count ("s simulated", "runs")
    std::string rate_unit;  // after the rate ("x real time"); empty: "<unit>/s"
    double total = 0;   // 0: unknown (no percentage, no ETA)
    int decimals = 0;   // of done and total
    double line_interval_s = 10;
    double redraw_interval_s = 0.2;
  };

  // Writes to `out` in `mode`.
  ProgressReporter(Options options, Mode mode, std::ostream& out);
  // Writes to stderr: off when `quiet`, a redrawn line when stderr is a terminal, else lines.
  // (Returned as a prvalue: the reporter is neither copied nor moved.)
  static ProgressReporter forStderr(Options options, bool quiet);
  ProgressReporter(const ProgressReporter&) = delete;
  ProgressReporter& operator=(const ProgressReporter&) = delete;
  ~ProgressReporter();

  // `done` in the options' unit (never above total when total is known); `note` is appended
  // ("1234 requests"). Cheap when nothing is due: call it as often as convenient.
  void update(double done, const std::string& note = "");
  // The last state given to update(), then a newline on a terminal; a closing line elsewhere if any line was
  // written. Called by the destructor if not before.
  void finish();

  Mode mode() const { return mode_; }
  // One progress line without '\r' or '\n' (exposed for tests); the final one has no ETA.
  std::string format(double done, const std::string& note, double elapsed_s, bool final = false) const;

 private:
  using Clock = std::chrono::steady_clock;
  double elapsedSeconds() const;
  void write(double done, const std::string& note, bool final);

  Options options_;
  Mode mode_;
  std::ostream* out_;
  Clock::time_point start_;
  Clock::time_point last_write_;
  double last_done_ = 0;
  std::string last_note_;
  bool wrote_ = false;
  bool finished_ = false;
  std::size_t last_width_ = 0;  // of the redrawn line, to blank what a shorter one leaves
};

}  // namespace computron
