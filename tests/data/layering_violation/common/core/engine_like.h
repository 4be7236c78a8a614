// Fixture for the layering check's own test: the core including the simulator must be refused.
#pragma once
#include "common/types.h"
#include "sim/simulator.h"
