//! Shape + strides + offset: how a tensor's elements map into its storage.
//!
//! Views (reshape of contiguous data, permute, narrow, broadcast, unsqueeze)
//! only build a new `Layout` over the same storage; nothing is copied.

use crate::error::{Result, bad_arg, shape_err};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

/// Row-major strides of a contiguous tensor of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

impl Layout {
    pub fn contiguous(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: 0,
        }
    }

    pub fn new(shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Self {
        Self {
            shape,
            strides,
            offset,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when elements are stored row-major without gaps (size-1 dims may
    /// carry any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&n, &s) in self.shape.iter().zip(&self.strides).rev() {
            if n != 1 && s != expected {
                return false;
            }
            expected *= n;
        }
        true
    }

    /// Resolves one `-1` in a requested shape and checks the element count.
    pub fn resolve_shape(&self, op: &'static str, shape: &[isize]) -> Result<Vec<usize>> {
        let holes = shape.iter().filter(|&&d| d == -1).count();
        if holes > 1 || shape.iter().any(|&d| d < -1) {
            return Err(bad_arg(op, format!("invalid target shape {shape:?}")));
        }
        let known: Vec<usize> = shape
            .iter()
            .filter(|&&d| d != -1)
            .map(|&d| d as usize)
            .collect();
        let hole = match checked_numel(op, &known)? {
            0 => 0,
            k => self.numel() / k,
        };
        let resolved: Vec<usize> = shape
            .iter()
            .map(|&d| if d == -1 { hole } else { d as usize })
            .collect();
        self.check_same_count(op, &resolved)?;
        Ok(resolved)
    }

    /// An error unless `shape` holds exactly as many elements as this layout.
    pub fn check_same_count(&self, op: &'static str, shape: &[usize]) -> Result<()> {
        let n = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if n != Some(self.numel()) {
            return Err(shape_err(op, &self.shape, shape, "element counts differ"));
        }
        Ok(())
    }

    /// A view with `shape` if the data is contiguous; `None` means a copy is needed.
    pub fn reshaped(&self, shape: &[usize]) -> Option<Layout> {
        self.is_contiguous()
            .then(|| Layout::new(shape.to_vec(), contiguous_strides(shape), self.offset))
    }

    pub fn permuted(&self, op: &'static str, perm: &[usize]) -> Result<Layout> {
        let mut seen = vec![false; self.rank()];
        if perm.len() != self.rank()
            || perm
                .iter()
                .any(|&p| p >= self.rank() || std::mem::replace(&mut seen[p], true))
        {
            return Err(bad_arg(
                op,
                format!(
                    "{perm:?} is not a permutation of the {} axes of {:?}",
                    self.rank(),
                    self.shape
                ),
            ));
        }
        Ok(Layout::new(
            perm.iter().map(|&p| self.shape[p]).collect(),
            perm.iter().map(|&p| self.strides[p]).collect(),
            self.offset,
        ))
    }

    pub fn narrowed(
        &self,
        op: &'static str,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<Layout> {
        self.check_axis(op, axis)?;
        if start
            .checked_add(len)
            .is_none_or(|end| end > self.shape[axis])
        {
            return Err(bad_arg(
                op,
                format!(
                    "range {start}..{} exceeds axis {axis} of size {} in {:?}",
                    start as u128 + len as u128,
                    self.shape[axis],
                    self.shape
                ),
            ));
        }
        let mut shape = self.shape.clone();
        shape[axis] = len;
        Ok(Layout::new(
            shape,
            self.strides.clone(),
            self.offset + start * self.strides[axis],
        ))
    }

    /// Broadcasts to `target` (NumPy rules, aligning trailing axes): new or
    /// size-1 axes get stride 0.
    pub fn broadcast_to(&self, op: &'static str, target: &[usize]) -> Result<Layout> {
        if target.len() < self.rank() {
            return Err(shape_err(
                op,
                &self.shape,
                target,
                "cannot broadcast to fewer dimensions",
            ));
        }
        let lead = target.len() - self.rank();
        let mut strides = vec![0; target.len()];
        for (d, &t) in target.iter().enumerate().skip(lead) {
            let (n, s) = (self.shape[d - lead], self.strides[d - lead]);
            strides[d] = if n == t {
                s
            } else if n == 1 {
                0
            } else {
                return Err(shape_err(
                    op,
                    &self.shape,
                    target,
                    format!("axis {} has size {n}, target {t}", d - lead),
                ));
            };
        }
        Ok(Layout::new(target.to_vec(), strides, self.offset))
    }

    pub fn unsqueezed(&self, op: &'static str, axis: usize) -> Result<Layout> {
        if axis > self.rank() {
            return Err(bad_arg(
                op,
                format!("axis {axis} out of range for rank {}", self.rank()),
            ));
        }
        let (mut shape, mut strides) = (self.shape.clone(), self.strides.clone());
        let stride = if axis < self.rank() {
            self.strides[axis] * self.shape[axis]
        } else {
            1
        };
        shape.insert(axis, 1);
        strides.insert(axis, stride);
        Ok(Layout::new(shape, strides, self.offset))
    }

    pub fn check_axis(&self, op: &'static str, axis: usize) -> Result<()> {
        if axis >= self.rank() {
            return Err(bad_arg(
                op,
                format!("axis {axis} out of range for shape {:?}", self.shape),
            ));
        }
        Ok(())
    }

    /// The largest storage index this layout touches, plus one.
    pub fn required_len(&self) -> usize {
        if self.numel() == 0 {
            return self.offset;
        }
        self.offset
            + self
                .shape
                .iter()
                .zip(&self.strides)
                .map(|(&n, &s)| (n - 1) * s)
                .sum::<usize>()
            + 1
    }
}

/// The number of elements of `shape`, or an error if it overflows `usize`.
pub fn checked_numel(op: &'static str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad_arg(op, format!("shape {shape:?} has too many elements")))
}

/// The NumPy broadcast of two shapes.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(shape_err(
                op,
                a,
                b,
                format!("axis {i} has sizes {da} and {db}"),
            ));
        };
    }
    Ok(out)
}

/// The `(outer, r, inner)` blocks that reduce `axes` (sorted, unique) of
/// `shape`, one per run of adjacent axes, last run first; each block is
/// shaped by what the earlier ones left (reduced axes become 1). Both devices
/// reduce in this order, so their sums round the same way.
pub fn reduce_runs(shape: &[usize], axes: &[usize]) -> Vec<(usize, usize, usize)> {
    let mut shape = shape.to_vec();
    let mut runs = Vec::new();
    let mut i = axes.len();
    while i > 0 {
        let end = axes[i - 1];
        let mut start = end;
        while i > 1 && axes[i - 2] + 1 == start {
            i -= 1;
            start -= 1;
        }
        i -= 1;
        let outer: usize = shape[..start].iter().product();
        let r: usize = shape[start..=end].iter().product();
        let inner: usize = shape[end + 1..].iter().product();
        runs.push((outer, r, inner));
        for s in &mut shape[start..=end] {
            *s = 1;
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_shapes_numpy_rules() {
        assert_eq!(
            broadcast_shapes("t", &[8, 1, 6, 1], &[7, 1, 5]).unwrap(),
            vec![8, 7, 6, 5]
        );
        assert!(broadcast_shapes("t", &[3], &[4]).is_err());
    }

    #[test]
    fn permute_then_contiguity() {
        let l = Layout::contiguous(&[2, 3]);
        assert!(l.is_contiguous());
        let t = l.permuted("t", &[1, 0]).unwrap();
        assert!(!t.is_contiguous());
        assert_eq!(t.strides(), &[1, 3]);
    }
}
