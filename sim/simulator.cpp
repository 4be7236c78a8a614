// Placeholder until the simulator lands.
namespace computron::sim {
int simulatorPlaceholder() { return 0; }
}  // namespace computron::sim
