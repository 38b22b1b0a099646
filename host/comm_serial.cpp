// Stands in for host/comm_mpi.cpp when CMake found no MPI: every run is a
// single process.
#include "comm.hpp"

namespace gradnoise::detail {

Communicator* mpi_world() { return nullptr; }
bool mpi_built() { return false; }

}  // namespace gradnoise::detail
