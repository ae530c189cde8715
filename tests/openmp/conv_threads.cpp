// layers/conv2d.hpp over threads: images are split across the OpenMP pool (each thread with its
// own patch buffer) and the parameter gradient is summed in fixed chunks of images, so every
// operation gives the same bits on one thread and on several.

#include <catch2/catch.hpp>

#include <Eigen/Core>

#include "bilevel/layers/conv2d.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;

namespace {

struct conv_results {
  Matrix<float> forward, transpose, weight_gradient;
  Vector<float> bias_gradient;
};

conv_results run(const conv2d<float>& conv, const Matrix<float>& weights,
                 const Vector<float>& bias, const Matrix<float>& x, const Matrix<float>& g,
                 int threads) {
  Eigen::setNbThreads(threads);
  conv_results r{Matrix<float>(conv.outputs(), x.cols()), Matrix<float>(conv.inputs(), x.cols()),
                 Matrix<float>(conv.weight_rows(), conv.weight_cols()),
                 Vector<float>(conv.bias_size())};
  conv.apply(weights, bias, x, r.forward);
  conv.apply_transpose(weights, g, r.transpose, 0.5f);
  conv.parameter_gradient(x, g, 0.02f, r.weight_gradient, r.bias_gradient);
  Eigen::setNbThreads(1);
  return r;
}

/// Every operation of `conv` on `images` random images, on one thread and on two: the same bits.
void check_same_bits(const conv2d<float>& conv, random_source& random, Index images) {
  const Matrix<float> weights =
      random_matrix<float>(random, conv.weight_rows(), conv.weight_cols());
  const Vector<float> bias = random_matrix<float>(random, conv.bias_size(), 1);
  const Matrix<float> x = random_matrix<float>(random, conv.inputs(), images);
  const Matrix<float> g = random_matrix<float>(random, conv.outputs(), images);
  const conv_results one = run(conv, weights, bias, x, g, 1);
  const conv_results two = run(conv, weights, bias, x, g, 2);
  INFO(images << " images");
  CHECK(one.forward == two.forward);
  CHECK(one.transpose == two.transpose);
  CHECK(one.weight_gradient == two.weight_gradient);
  CHECK(one.bias_gradient == two.bias_gradient);
  CHECK(one.weight_gradient.norm() > 0.0f);  // the products ran
}

}  // namespace

TEST_CASE("conv2d gives the same bits on one thread and on two", "[conv]") {
  random_source random(3);
  // LeNet-5's second convolution and a strided, padded one; 37 images (chunks of 8 and a rest).
  for (const conv2d<float>::geometry shape :
       {conv2d<float>::geometry{{6, 14, 14}, 16, 5, 1, 0},
        conv2d<float>::geometry{{3, 11, 9}, 4, 3, 2, 1}})
    check_same_bits(conv2d<float>(shape), random, 37);
}

TEST_CASE("conv2d gives the same bits on one thread and on two for batches too small to split",
          "[conv]") {
  // One image, or one chunk of the gradient (<= 8 images), is one range: the products then ran
  // on the calling thread, where Eigen split them over its two threads and summed in another
  // order (these shapes' products are large enough for it to; LeNet-5's are not).
  random_source random(4);
  for (const conv2d<float>::geometry shape :
       {conv2d<float>::geometry{{2, 27, 9}, 20, 5, 1, 4},
        conv2d<float>::geometry{{9, 32, 15}, 17, 7, 1, 0}})
    for (const Index images : {1, 5}) check_same_bits(conv2d<float>(shape), random, images);
}
