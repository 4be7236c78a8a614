// The runtime library's sources land here (see runtime/CMakeLists.txt).
namespace computron::runtime {
int runtimeLibraryVersion() { return 1; }
}  // namespace computron::runtime
