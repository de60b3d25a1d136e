//! One rank's slice of a tensor ([`Weights::array_slice`]): the elements `range` of one axis,
//! read from the file as one positioned read per contiguous run (one run when the axis is the
//! first, one per leading index otherwise), so a tensor-parallel rank never holds the whole
//! tensor.

use std::ops::Range;

use mlx_rs::{Array, Dtype};

use super::{elem_size, read_range, Weights, CODE_SHAPE};
use crate::diagnostic::{Diagnostic, Result};

impl Weights {
    /// Loads elements `range` along `axis` of tensor `name`, whose whole shape must be
    /// `expected`; `cast` as in [`Weights::array`].
    pub fn array_slice(
        &self,
        name: &str,
        expected: &[usize],
        axis: usize,
        range: Range<usize>,
        cast: Option<Dtype>,
    ) -> Result<Array> {
        let info = self.info_or_missing(name)?;
        let want: Vec<Option<usize>> = expected.iter().copied().map(Some).collect();
        self.check_shape(name, info, &want)?;
        let shard = &self.files[info.file];
        if axis >= expected.len() || range.start > range.end || range.end > expected[axis] {
            return Err(Diagnostic::error(
                CODE_SHAPE,
                format!("tensor `{name}` {expected:?}: no slice {range:?} of axis {axis}"),
            )
            .with_file(&shard.path));
        }
        let mut local = expected.to_vec();
        local[axis] = range.len();
        let (dtype, shape) = self.mlx_layout(name, info, &local)?;
        let elem = elem_size(info.dtype).unwrap_or(1) as u64;
        let outer: usize = expected[..axis].iter().product();
        let inner = expected[axis + 1..].iter().product::<usize>() as u64 * elem;
        let (run, stride) = (range.len() as u64 * inner, expected[axis] as u64 * inner);
        let mut bytes = Vec::with_capacity((run as usize).saturating_mul(outer));
        let mut buf = Vec::new();
        for o in 0..outer as u64 {
            let start = info.range.start + o * stride + range.start as u64 * inner;
            bytes.extend_from_slice(read_range(shard, name, start..start + run, &mut buf)?);
        }
        // SAFETY: `bytes` holds prod(local) elements of `dtype` (each run is `range.len()`
        // rows of the validated tensor, lengths checked by `read_range`); MLX copies them.
        let array = unsafe { Array::from_raw_data(bytes.as_ptr().cast(), &shape, dtype) };
        crate::progress::bytes_read(bytes.len() as u64);
        self.scratch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .loaded(bytes.len() as u64, self.tensors.len());
        self.cast(name, info, array, cast)
    }
}
