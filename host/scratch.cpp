// The scratch cache of scratch.hpp: freed blocks by size, behind one mutex
// (a pass takes a handful of blocks, so contention does not arise).
#include "scratch.hpp"

#include <map>
#include <mutex>
#include <new>

namespace gradnoise::detail {
namespace {

struct Cache {
  std::mutex mutex;
  std::multimap<std::size_t, void*> free_blocks;
  std::size_t bytes = 0;
};

/// Never destroyed: buffers in static objects may be released at exit.
Cache& cache() {
  static Cache* const instance = new Cache;
  return *instance;
}

}  // namespace

void* scratch_allocate(std::size_t bytes) {
  if (bytes >= kScratchCachedBytes) {
    Cache& c = cache();
    const std::lock_guard<std::mutex> lock(c.mutex);
    if (const auto found = c.free_blocks.find(bytes); found != c.free_blocks.end()) {
      void* block = found->second;
      c.free_blocks.erase(found);
      c.bytes -= bytes;
      return block;
    }
  }
  return ::operator new(bytes);
}

void scratch_release(void* block, std::size_t bytes) noexcept {
  if (block == nullptr) return;
  if (bytes >= kScratchCachedBytes) {
    Cache& c = cache();
    const std::lock_guard<std::mutex> lock(c.mutex);
    if (c.bytes + bytes <= kScratchCacheLimit) {
      try {
        c.free_blocks.emplace(bytes, block);
        c.bytes += bytes;
        return;
      } catch (...) {  // no memory for the map's node: free the block instead
      }
    }
  }
  ::operator delete(block);
}

std::size_t scratch_cached_bytes() {
  Cache& c = cache();
  const std::lock_guard<std::mutex> lock(c.mutex);
  return c.bytes;
}

}  // namespace gradnoise::detail
