// core/packed_product.hpp and layers/packed_maps.hpp: products with a matrix packed once
// against the same products in double, on shapes that take every path of the kernel (rows and
// columns left over from its register blocks, several blocks of depth and of rows), the same
// bits however the columns are split (what threads do), and the program's maps packed only
// while frozen and packed anew after the parameters change.

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>

#include "bilevel/activations/activations.hpp"
#include "bilevel/core/packed_product.hpp"
#include "bilevel/layers/architecture.hpp"
#include "bilevel/layers/packed_maps.hpp"
#include "bilevel/losses/losses.hpp"
#include "bilevel/program.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;
using Catch::Matchers::Contains;

namespace {

/// Every entry of `actual` = offset + scale A x within the rounding of a sum of `depth` products
/// and the offset (|error| <= (depth + 2) eps (|offset| + sum_k |a_ik x_kj|)), the reference
/// taken in double.
template <class S>
void check_product(const Matrix<S>& actual, const Matrix<double>& a, const Matrix<double>& x,
                   double scale, double offset = 0) {
  const Matrix<double> exact = scale * a * x;
  const Matrix<double> bound = std::abs(scale) * a.cwiseAbs() * x.cwiseAbs();
  const double eps = std::numeric_limits<S>::epsilon();
  REQUIRE(actual.rows() == exact.rows());
  REQUIRE(actual.cols() == exact.cols());
  for (Index j = 0; j < exact.cols(); ++j)
    for (Index i = 0; i < exact.rows(); ++i)
      REQUIRE(std::abs(double(actual(i, j)) - offset - exact(i, j)) <=
              double(a.cols() + 2) * eps * (std::abs(offset) + bound(i, j)) + 1e-300);
}

/// A (rows x depth) and A^T packed for `width` columns, multiplied by `cols` columns given as a
/// view into a wider matrix, written into a view of a larger output whose other entries must
/// stay as they were.
template <class S>
void check_shape(random_source& random, Index rows, Index depth, Index width, Index cols) {
  const Matrix<S> a = random_matrix<S>(random, rows, depth);
  const S scale = S(-0.75);
  for (const bool transposed : {false, true}) {
    const Index out_rows = transposed ? depth : rows, in_rows = transposed ? rows : depth;
    detail::packed_matrix<S> packed;
    if (transposed)
      packed.pack(a.transpose(), width);
    else
      packed.pack(a, width);
    CHECK(packed.rows() == out_rows);
    CHECK(packed.depth() == in_rows);
    const Matrix<S> wide = random_matrix<S>(random, in_rows, cols + 3);
    Matrix<S> target = Matrix<S>::Constant(out_rows + 3, cols + 2, S(7));
    packed.multiply(wide.middleCols(2, cols), target.block(1, 1, out_rows, cols), scale);
    const Matrix<double> a_double =
        transposed ? Matrix<double>(a.transpose().template cast<double>())
                   : Matrix<double>(a.template cast<double>());
    check_product<S>(target.block(1, 1, out_rows, cols), a_double,
                     wide.middleCols(2, cols).template cast<double>(), double(scale));
    Matrix<S> outside = target;
    outside.block(1, 1, out_rows, cols).setConstant(S(7));
    CHECK((outside.array() == S(7)).all());
    // Added into what is there: 7 + scale A x.
    target.block(1, 1, out_rows, cols).setConstant(S(7));
    packed.multiply(wide.middleCols(2, cols), target.block(1, 1, out_rows, cols), scale, true);
    check_product<S>(target.block(1, 1, out_rows, cols), a_double,
                     wide.middleCols(2, cols).template cast<double>(), double(scale), 7.0);
  }
}

}  // namespace

TEST_CASE("a packed matrix multiplies as the matrix does, on every path of the kernel",
          "[packed]") {
  random_source random(11);
  // rows x depth, packed width, columns multiplied: the paper MLP's maps at full and narrow
  // widths; rows and columns left over from the register blocks (48, 16, 8, 4 rows; 4 columns);
  // two blocks of depth (784 deep); several blocks of rows (2000 rows at width 8); one column.
  const Index shapes[][4] = {{128, 256, 50, 50}, {64, 128, 50, 3}, {10, 64, 50, 1},
                             {49, 33, 8, 7},     {3, 5, 4, 4},     {256, 784, 50, 50},
                             {2000, 600, 8, 8},  {17, 1, 5, 5},    {1, 17, 5, 2}};
  for (const auto& shape : shapes) {
    INFO("rows " << shape[0] << ", depth " << shape[1] << ", width " << shape[2] << ", columns "
                 << shape[3]);
    check_shape<float>(random, shape[0], shape[1], shape[2], shape[3]);
    check_shape<double>(random, shape[0], shape[1], shape[2], shape[3]);
  }
}

TEST_CASE("a packed product gives the same bits however the columns are split in fours",
          "[packed]") {
  random_source random(12);
  for (const Index rows : {7, 64, 256}) {
    const Matrix<float> a = random_matrix<float>(random, rows, 300);
    const Matrix<float> x = random_matrix<float>(random, 300, 23);
    detail::packed_matrix<float> packed;
    packed.pack(a, 23);
    Matrix<float> whole(rows, 23), split(rows, 23);
    packed.multiply(x, whole, 1.0f);
    for (const Index first : {4, 8, 20}) {
      packed.multiply(x.leftCols(first), split.leftCols(first), 1.0f);
      packed.multiply(x.rightCols(23 - first), split.rightCols(23 - first), 1.0f);
      CHECK((split.array() == whole.array()).all());
    }
  }
}

TEST_CASE("a packed matrix can be packed again with another shape and refuses bad operands",
          "[packed]") {
  random_source random(13);
  detail::packed_matrix<double> packed;
  packed.pack(random_matrix<double>(random, 5, 3), 2);
  const Matrix<double> a = random_matrix<double>(random, 40, 90);
  const Matrix<double> x = random_matrix<double>(random, 90, 30);
  packed.pack(a, 30);
  Matrix<double> out(40, 30);
  packed.multiply(x, out, 2.0);
  check_product<double>(out, a, x, 2.0);
  Matrix<double> wide(40, 31);
  CHECK_THROWS_WITH(packed.multiply(random_matrix<double>(random, 90, 31), wide, 1.0),
                    Contains("packed_matrix::multiply") && Contains("90 x <= 30") &&
                        Contains("90 x 31"));
  CHECK_THROWS_WITH(packed.multiply(random_matrix<double>(random, 89, 3), out.leftCols(3), 1.0),
                    Contains("90 x <= 30") && Contains("89 x 3"));
  Matrix<double> short_out(39, 3);
  CHECK_THROWS_WITH(packed.multiply(x.leftCols(3), short_out, 1.0),
                    Contains("packed_matrix::multiply") && Contains("out"));
}

TEST_CASE("a program's maps are packed only while frozen, and packed anew after a change",
          "[packed]") {
  using net_type = program<double, softmax_cross_entropy, relu, identity>;
  net_type net({1, 6, 6}, parse_architecture("conv3k3p1-pool2-dense7-dense5"),
               {relu{}, identity{}, relu{}, identity{}});
  random_source random(14);
  randomize(net, random);
  detail::packed_maps<double> maps;
  // Every layer's map and transpose against the program's own, frozen and thawed.
  const auto check_maps = [&](Index width) {
    for (Index k = 0; k < net.depth(); ++k) {
      const Matrix<double> x = random_matrix<double>(random, net.layer(k).inputs(), width);
      const Matrix<double> g = random_matrix<double>(random, net.layer(k).outputs(), width);
      Matrix<double> expected(net.layer(k).outputs(), width), actual = expected;
      net.linear(k, x, expected);
      maps.linear(net, k, x, actual);
      CHECK((actual - expected).cwiseAbs().maxCoeff() <= 1e-13);
      Matrix<double> expected_t(net.layer(k).inputs(), width), actual_t = expected_t;
      net.transpose(k, g, expected_t, 0.5);
      maps.transpose(net, k, g, actual_t, 0.5);
      CHECK((actual_t - expected_t).cwiseAbs().maxCoeff() <= 1e-13);
      net.transpose(k, g, expected_t, -2.0, output_mode::add);
      maps.transpose(net, k, g, actual_t, -2.0, output_mode::add);
      CHECK((actual_t - expected_t).cwiseAbs().maxCoeff() <= 1e-13);
    }
  };
  check_maps(6);
  {
    const auto frozen = maps.frozen(net, 6);
    check_maps(6);
    check_maps(2);
    check_maps(9);  // wider than frozen for: through the program
  }
  randomize(net, random);  // thawed: the new parameters, not the packed ones
  check_maps(6);
  const auto frozen = maps.frozen(net, 6);  // frozen again: packed anew
  check_maps(6);
}
