// computron compare A B: the relative error between two runs' outputs (summary.json, requests.csv,
// timeline.json), per model and overall, e.g. a GPU replay (A, the reference) against the
// simulator (B) on the same scenario.
#pragma once

namespace computron::sim {

int compareMain(int argc, char** argv);  // argv[0] is "compare"

}  // namespace computron::sim
