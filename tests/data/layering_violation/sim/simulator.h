// Fixture for the layering check's own test.
#pragma once
