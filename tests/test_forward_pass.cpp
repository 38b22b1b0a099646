// core/forward_pass.hpp with cuBLAS's arguments (column-major BLAS on the
// CPU) against the CPU's ChunkForward, which runs the same sequence through
// row-major BLAS: the GPU pipeline's forward and backward products, checked
// without a GPU for every model kind and loss.
#include <gtest/gtest.h>

#include <vector>

#include "chunk_pass.hpp"
#include "column_major_blas.hpp"
#include "forward_pass.hpp"
#include "host_exec.hpp"
#include "losses.hpp"
#include "test_util.hpp"

namespace gradnoise {
namespace {

struct ColumnMajorForwardExec : detail::HostRowOps {
  void gemm(const detail::RowMajorGemm& g, const double* a, const double* b, double* c) {
    testing::column_major_dgemm(g, a, b, c);
  }
};

TEST(ForwardPass, CublasArgumentsGiveTheCpuChunkPass) {
  const std::vector<std::vector<std::int64_t>> shapes = {{7, 3}, {6, 4, 3}, {5, 4, 6, 3, 2}};
  for (const auto& widths : shapes) {
    for (const Loss loss : all_losses()) {
      for (const bool bias : {true, false}) {
        SCOPED_TRACE(std::to_string(widths.size() - 1) + " layers, " + loss_name(loss) +
                     (bias ? ", bias" : ", no bias"));
        const std::int64_t m = 23, k = widths.back();
        const Model model = testing::random_model(widths, bias, 3);
        const Dataset data = testing::random_dataset(m, widths.front(), k, loss, 5);
        detail::ChunkForward cpu(model, loss, m);
        const detail::ChunkView& want = cpu.run(data, 0, m);

        const std::int64_t layers = model.num_layers();
        std::vector<std::vector<double>> inputs(layers), errors(layers);
        std::vector<double> outputs(m * k), sample_loss(m);
        std::vector<detail::ForwardLayerBuffers> buffers(layers);
        for (std::int64_t l = 0; l < layers; ++l) {
          errors[l].assign(m * model.layers[l].out, NAN);
          if (l > 0) inputs[l].assign(m * model.layers[l].in, NAN);
        }
        for (std::int64_t l = 0; l < layers; ++l) {
          const Layer& layer = model.layers[l];
          buffers[l] = {layer.weight.data(), bias ? layer.bias.data() : nullptr,
                        l == 0 ? data.x.data() : inputs[l].data(),
                        l + 1 < layers ? inputs[l + 1].data() : outputs.data(), errors[l].data()};
        }
        ColumnMajorForwardExec exec;
        detail::forward_backward(exec, model, buffers, m, [&] {
          losses::visit_loss(loss, [&](auto l) {
            for (std::int64_t i = 0; i < m; ++i) {
              sample_loss[i] = decltype(l)::error_row(
                  outputs.data() + i * k, data.y.empty() ? nullptr : data.y.data() + i * k,
                  data.labels.empty() ? 0 : data.labels[i], k, errors[layers - 1].data() + i * k);
            }
          });
        });
        for (std::int64_t l = 0; l < layers; ++l) {
          const std::int64_t out = model.layers[l].out;
          const std::vector<double> want_error(want.errors[l], want.errors[l] + m * out);
          EXPECT_TRUE(testing::all_near(errors[l], want_error, 1e-13, 1e-13)) << "δ of layer " << l;
        }
        const std::vector<double> want_out(want.outputs, want.outputs + m * k);
        EXPECT_TRUE(testing::all_near(outputs, want_out, 1e-13, 1e-13));
        EXPECT_TRUE(testing::all_near(sample_loss, std::vector<double>(want.losses, want.losses + m),
                                      1e-13, 1e-13));
      }
    }
  }
}

}  // namespace
}  // namespace gradnoise
