// core/packed_product.hpp over threads: the batch's columns are split over the OpenMP pool in
// blocks of the kernel's width, so a product gives the same bits on one thread and on two.

#include <catch2/catch.hpp>

#include <Eigen/Core>

#include "bilevel/core/packed_product.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;

TEST_CASE("a packed product gives the same bits on one thread and on two", "[packed]") {
  random_source random(21);
  // rows x depth x columns: the paper MLP's maps, odd widths, a product too small to split.
  const Index shapes[][3] = {{128, 256, 50}, {256, 128, 50}, {64, 128, 23}, {10, 64, 7},
                             {300, 700, 50}, {5, 3, 2}};
  for (const auto& shape : shapes) {
    INFO("rows " << shape[0] << ", depth " << shape[1] << ", columns " << shape[2]);
    const Matrix<float> a = random_matrix<float>(random, shape[0], shape[1]);
    const Matrix<float> x = random_matrix<float>(random, shape[1], shape[2]);
    detail::packed_matrix<float> packed;
    packed.pack(a, shape[2]);
    Matrix<float> one(shape[0], shape[2]), two(shape[0], shape[2]);
    Eigen::setNbThreads(1);
    packed.multiply(x, one, 0.5f);
    Eigen::setNbThreads(2);
    packed.multiply(x, two, 0.5f);
    Eigen::setNbThreads(1);
    CHECK((one.array() == two.array()).all());
    CHECK((one - 0.5f * a * x).cwiseAbs().maxCoeff() <= 1e-4f);
  }
}
