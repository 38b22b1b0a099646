// OpenBLAS single-threaded for a scope: the engines parallelise over chunks of
// rows themselves, one BLAS caller per thread, which on few cores beats
// letting OpenBLAS's pool and ours compete for the same cores.
#pragma once

#include <cblas.h>

namespace gradnoise::detail {

/// Sets OpenBLAS to one thread while `active`, and restores its setting.
class SingleThreadedBlas {
 public:
  explicit SingleThreadedBlas(bool active) : active_(active), saved_(openblas_get_num_threads()) {
    if (active_) openblas_set_num_threads(1);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;
  ~SingleThreadedBlas() {
    if (active_) openblas_set_num_threads(saved_);
  }

 private:
  bool active_;
  int saved_;
};

}  // namespace gradnoise::detail
