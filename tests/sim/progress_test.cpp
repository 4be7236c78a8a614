// The progress reporter: plain lines without carriage returns off a terminal, a redrawn line on
// one, nothing when off; the line's done/total, rate and ETA.
#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>
#include <string>

#include "common/scenario/progress.h"

namespace computron {
namespace {

ProgressReporter::Options runs(double interval_s) {
  ProgressReporter::Options o;
  o.label = "sweep";
  o.unit = "runs";
  o.total = 40;
  o.line_interval_s = interval_s;
  o.redraw_interval_s = interval_s;
  return o;
}

TEST(Progress, LineHasDoneTotalRateAndEta) {
  std::ostringstream out;
  ProgressReporter p(runs(0), ProgressReporter::Mode::kOff, out);
  EXPECT_EQ(p.format(10, "", 5.0), "sweep: 10/40 runs (25%), 2.00 runs/s, ETA 15s, 5s elapsed");
  EXPECT_EQ(p.format(10, "", 5.0, true), "sweep: 10/40 runs (25%), 2.00 runs/s, 5s elapsed");
  EXPECT_EQ(p.format(2, "note", 200.0), "sweep: 2/40 runs (5%), 0.01 runs/s, ETA 1h03m, 3m20s elapsed; note");
  ProgressReporter::Options unknown = runs(0);
  unknown.total = 0;
  unknown.rate_unit = "x real time";
  ProgressReporter q(unknown, ProgressReporter::Mode::kOff, out);
  EXPECT_EQ(q.format(30, "", 2.0), "sweep: 30 runs, 15x real time, 2s elapsed");
}

TEST(Progress, PlainLinesWithoutCarriageReturns) {
  std::ostringstream out;
  {
    ProgressReporter p(runs(0), ProgressReporter::Mode::kLines, out);
    p.update(4);
    p.update(8, "note");
  }  // the destructor writes the closing line
  const std::string text = out.str();
  EXPECT_EQ(text.find('\r'), std::string::npos) << text;
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 3) << text;
  EXPECT_EQ(text.rfind("sweep: 4/40 runs (10%)", 0), 0u) << text;
  EXPECT_NE(text.find("; note (finished)\n"), std::string::npos) << text;
}

TEST(Progress, NothingBeforeTheFirstIntervalNorWhenOff) {
  std::ostringstream lines, off;
  {
    ProgressReporter p(runs(3600), ProgressReporter::Mode::kLines, lines);
    p.update(1);
    p.update(40);
    ProgressReporter q(runs(0), ProgressReporter::Mode::kOff, off);
    q.update(1);
  }
  EXPECT_EQ(lines.str(), "");
  EXPECT_EQ(off.str(), "");
}

TEST(Progress, TerminalRedrawsOneLine) {
  std::ostringstream out;
  ProgressReporter p(runs(0), ProgressReporter::Mode::kTerminal, out);
  p.update(1, "a longer note");
  p.update(2);
  p.finish();
  const std::string text = out.str();
  EXPECT_EQ(text.front(), '\r');
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1) << text;
  EXPECT_EQ(text.back(), '\n');
  // A shorter line blanks what the longer one left.
  const std::size_t second = text.find('\r', 1);
  const std::size_t third = text.find('\r', second + 1);
  EXPECT_EQ(third - second, second) << text;
}

}  // namespace
}  // namespace computron
