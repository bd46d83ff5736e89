// The one cub instantiation of the library (compile time): stable radix sort of uint64 keys with int32 values.
#include <cub/device/device_radix_sort.cuh>

#include "cuda_common.cuh"

namespace mrcnn {
namespace cuda {

cudaError_t radix_sort_pairs(void* temp, size_t* temp_bytes, uint64_t* keys0, uint64_t* keys1, int32_t* vals0,
                             int32_t* vals1, int n, int end_bit, int* selector, cudaStream_t stream) {
  cub::DoubleBuffer<uint64_t> keys(keys0, keys1);
  cub::DoubleBuffer<int32_t> vals(vals0, vals1);
  const cudaError_t err = cub::DeviceRadixSort::SortPairs(temp, *temp_bytes, keys, vals, n, 0, end_bit, stream);
  if (selector) *selector = keys.selector;
  return err;
}

}  // namespace cuda
}  // namespace mrcnn
