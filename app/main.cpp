#include <iostream>
int main() {
  std::cout << "computron " << COMPUTRON_VERSION << "\n";
  return 0;
}
