// computron profile show|merge: what a profile covers, and one profile made of several calibrate
// runs (docs/specs.md, "Profiles"). The merging and the description are common/profile_merge.h;
// this is the command line around them.
#pragma once

namespace computron::sim {

int profileMain(int argc, char** argv);  // argv[0] is "profile"

}  // namespace computron::sim
