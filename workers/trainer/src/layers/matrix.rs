//! Matrix products on slices through the `gemm` crate (the one burn-flex uses), one thread
//! each: the kernels run them per image, the images in parallel.

/// A matrix read from a slice: element (r, c) at `r * row_stride + c * column_stride`.
#[derive(Clone, Copy)]
pub struct Matrix<'a> {
    values: &'a [f32],
    rows: usize,
    columns: usize,
    row_stride: usize,
    column_stride: usize,
}

impl<'a> Matrix<'a> {
    /// The first `rows` × `columns` values of `values`, row after row.
    pub fn rows(values: &'a [f32], rows: usize, columns: usize) -> Self {
        Matrix {
            values: &values[..rows * columns],
            rows,
            columns,
            row_stride: columns,
            column_stride: 1,
        }
    }

    pub fn transposed(self) -> Self {
        Matrix {
            rows: self.columns,
            columns: self.rows,
            row_stride: self.column_stride,
            column_stride: self.row_stride,
            ..self
        }
    }
}

/// `out = a · b` (or `out += a · b` with `accumulate`), `out` row-major, on this thread: the
/// one call into `gemm`'s raw-pointer interface, behind bounds checks.
#[allow(unsafe_code)]
pub fn multiply(out: &mut [f32], a: Matrix, b: Matrix, accumulate: bool) {
    assert_eq!(a.columns, b.rows, "inner dimensions");
    assert_eq!(out.len(), a.rows * b.columns, "output size");
    for m in [a, b] {
        let last = (m.rows.max(1) - 1) * m.row_stride + (m.columns.max(1) - 1) * m.column_stride;
        assert!(
            m.rows * m.columns == 0 || last < m.values.len(),
            "matrix outside its slice"
        );
    }
    if out.is_empty() {
        return;
    }
    // SAFETY: the asserts above keep every index gemm reads or writes inside the slices, and
    // `out` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            a.rows,
            b.columns,
            a.columns,
            out.as_mut_ptr(),
            1,
            b.columns as isize,
            accumulate,
            a.values.as_ptr(),
            a.column_stride as isize,
            a.row_stride as isize,
            b.values.as_ptr(),
            b.column_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiply_computes_and_accumulates_a_product_with_a_transposed_operand() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2 × 3
        let b = [1.0, 0.0, 2.0, 1.0, 0.0, 1.0]; // read transposed: 3 × 2 [[1, 1], [0, 0], [2, 1]]
        let mut out = [10.0; 4];
        multiply(
            &mut out,
            Matrix::rows(&a, 2, 3),
            Matrix::rows(&b, 2, 3).transposed(),
            false,
        );
        assert_eq!(out, [7.0, 4.0, 16.0, 10.0]);
        multiply(
            &mut out,
            Matrix::rows(&a, 2, 3),
            Matrix::rows(&b, 2, 3).transposed(),
            true,
        );
        assert_eq!(out, [14.0, 8.0, 32.0, 20.0]);
    }

    #[test]
    #[should_panic(expected = "matrix outside its slice")]
    fn multiply_refuses_a_matrix_that_reads_past_its_slice() {
        let a = [1.0; 4];
        let wide = Matrix {
            row_stride: 3,
            ..Matrix::rows(&a, 2, 2)
        };
        multiply(&mut [0.0; 4], wide, Matrix::rows(&a, 2, 2), false);
    }
}
