#include "common/scenario/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <utility>

namespace computron {
namespace {

std::string number(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

// 7s, 1m05s, 2h03m.
std::string duration(double seconds) {
  const auto s = static_cast<long long>(std::llround(std::max(0.0, seconds)));
  char buf[64];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%llds", s);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, (s % 3600) / 60);
  }
  return buf;
}

}  // namespace

ProgressReporter::ProgressReporter(Options options, Mode mode, std::ostream& out)
    : options_(std::move(options)), mode_(mode), out_(&out), start_(Clock::now()), last_write_(start_) {}

ProgressReporter ProgressReporter::forStderr(Options options, bool quiet) {
  const Mode mode = quiet ? Mode::kOff : (::isatty(STDERR_FILENO) ? Mode::kTerminal : Mode::kLines);
  return ProgressReporter(std::move(options), mode, std::cerr);
}

ProgressReporter::~ProgressReporter() { finish(); }

double ProgressReporter::elapsedSeconds() const {
  return std::chrono::duration<double>(Clock::now() - start_).count();
}

std::string ProgressReporter::format(double done, const std::string& note, double elapsed_s, bool final) const {
  std::string line = options_.label + ": " + number(done, options_.decimals);
  if (options_.total > 0) line += "/" + number(options_.total, options_.decimals);
  line += " " + options_.unit;
  if (options_.total > 0) line += " (" + number(100.0 * std::min(done / options_.total, 1.0), 0) + "%)";
  if (elapsed_s > 0) {
    const double rate = done / elapsed_s;
    line += ", " + number(rate, rate < 10 ? 2 : 0) +
            (options_.rate_unit.empty() ? " " + options_.unit + "/s" : options_.rate_unit);
    if (!final && options_.total > 0 && rate > 0 && done < options_.total)
      line += ", ETA " + duration((options_.total - done) / rate);
  }
  line += ", " + duration(elapsed_s) + " elapsed";
  if (!note.empty()) line += "; " + note;
  return line;
}

void ProgressReporter::write(double done, const std::string& note, bool final) {
  const double elapsed = elapsedSeconds();
  std::string line = format(done, note, elapsed, final);
  if (mode_ == Mode::kTerminal) {
    const std::size_t width = line.size();
    if (width < last_width_) line += std::string(last_width_ - width, ' ');
    last_width_ = width;
    *out_ << '\r' << line;
    if (final) *out_ << '\n';
  } else {
    *out_ << line << (final ? " (finished)" : "") << '\n';
  }
  out_->flush();
  wrote_ = true;
  last_write_ = Clock::now();
}

void ProgressReporter::update(double done, const std::string& note) {
  if (mode_ == Mode::kOff || finished_) return;
  last_done_ = done;
  last_note_ = note;
  const double since = std::chrono::duration<double>(Clock::now() - last_write_).count();
  const double interval = mode_ == Mode::kTerminal ? options_.redraw_interval_s : options_.line_interval_s;
  if (since >= interval) write(done, note, false);
}

void ProgressReporter::finish() {
  if (finished_) return;
  finished_ = true;
  // A run too short for any progress line ends without one.
  if (mode_ != Mode::kOff && wrote_) write(last_done_, last_note_, true);
}

}  // namespace computron
