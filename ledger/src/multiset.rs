//! An order-independent hash of a multiset: the sum modulo 2^256 of BLAKE3 hashes of its items.
//!
//! Used where two sequences must hold the same items but are read in different orders (the log
//! in position order, an index in key order), so each can be read sequentially once instead of
//! looking every item up in the other. Equal sums mean equal multisets unless someone chose the
//! items adversarially (Wagner's generalized birthday attack); callers use it as a consistency
//! check, never as the tamper evidence, which is the hash chain.

/// A 256-bit value with wrapping addition, as four little-endian u64 limbs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Sum256(pub [u64; 4]);

impl Sum256 {
    /// Parses 32 bytes (little-endian limbs).
    pub fn from_bytes(bytes: &[u8; 32]) -> Sum256 {
        let mut limbs = [0u64; 4];
        for (limb, chunk) in limbs.iter_mut().zip(bytes.chunks_exact(8)) {
            *limb = u64::from_le_bytes(chunk.try_into().expect("chunks_exact(8) yields 8 bytes"));
        }
        Sum256(limbs)
    }

    /// The 32-byte form.
    pub fn to_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (chunk, limb) in out.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&limb.to_le_bytes());
        }
        out
    }

    /// self + value (mod 2^256).
    pub fn add(&mut self, value: &[u8; 32]) {
        let other = Sum256::from_bytes(value).0;
        let mut carry = false;
        for (a, b) in self.0.iter_mut().zip(other) {
            let (s1, c1) = a.overflowing_add(b);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            *a = s2;
            carry = c1 || c2;
        }
    }

    /// self - value (mod 2^256).
    pub fn sub(&mut self, value: &[u8; 32]) {
        let other = Sum256::from_bytes(value).0;
        let mut borrow = false;
        for (a, b) in self.0.iter_mut().zip(other) {
            let (d1, b1) = a.overflowing_sub(b);
            let (d2, b2) = d1.overflowing_sub(u64::from(borrow));
            *a = d2;
            borrow = b1 || b2;
        }
    }

    /// Adds the BLAKE3 hash of `parts`, each length-prefixed so that item boundaries are unambiguous.
    pub fn add_item(&mut self, parts: &[&[u8]]) {
        let mut h = blake3::Hasher::new();
        for part in parts {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        self.add(h.finalize().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_order_independent_and_subtract_back() {
        let h1 = *blake3::hash(b"one").as_bytes();
        let h2 = *blake3::hash(b"two").as_bytes();
        let mut a = Sum256::default();
        a.add(&h1);
        a.add(&h2);
        let mut b = Sum256::default();
        b.add(&h2);
        b.add(&h1);
        assert_eq!(a, b);
        a.sub(&h1);
        assert_eq!(a, Sum256::from_bytes(&h2));
        a.sub(&h2);
        assert_eq!(a, Sum256::default());
    }

    #[test]
    fn carries_propagate_across_limbs() {
        let mut a = Sum256([u64::MAX, u64::MAX, 0, 0]);
        let mut one = [0u8; 32];
        one[0] = 1;
        a.add(&one);
        assert_eq!(a, Sum256([0, 0, 1, 0]));
        a.sub(&one);
        assert_eq!(a, Sum256([u64::MAX, u64::MAX, 0, 0]));
    }

    #[test]
    fn items_with_shifted_boundaries_differ() {
        let mut a = Sum256::default();
        a.add_item(&[b"ab", b"c"]);
        let mut b = Sum256::default();
        b.add_item(&[b"a", b"bc"]);
        assert_ne!(a, b);
    }
}
