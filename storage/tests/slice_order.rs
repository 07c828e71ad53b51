//! fjall's byte slices (`byteview::ByteView`, which lsm-tree's `Slice` and so every memtable
//! and table key wraps) order as their bytes do. The vendored byteview compares the first
//! four bytes, and two inline views whole, as integers before it compares slices
//! (vendor/byteview/ETCH-PATCH.md); a mistake there would misplace keys in every memtable and
//! table, so these tests hold the order to `[u8]`'s, for views built from bytes and for views
//! cut out of longer ones (a heap view with an offset, or an inline copy).

use byteview::ByteView;
use proptest::prelude::*;
use std::cmp::Ordering;

/// The bytes of `a` as views of every kind that holds them: built from the bytes; cut out of
/// a longer view (`pad` bytes on both sides, so a heap view starts at an offset, and a short
/// cut is an inline copy); joined from two parts (`fused`, as lsm-tree joins a key's shared
/// prefix and its rest); read from a reader (`from_reader`, as keys are read from disk);
/// written into a zeroed view through `get_mut`; and written through `get_mut` into a view
/// cut out of a longer one whose parent was dropped. All but the first two kinds set the first
/// bytes a heap view keeps in itself only when the writing ends (a builder's freeze, a
/// `Mutator`'s drop).
fn views(a: &[u8]) -> Vec<ByteView> {
    let mut out = vec![ByteView::from(a)];
    for pad in [1usize, 7, 24] {
        let mut longer = vec![0xA5u8; pad];
        longer.extend_from_slice(a);
        longer.extend(std::iter::repeat_n(0x5Au8, pad));
        out.push(ByteView::from(&longer[..]).slice(pad..pad + a.len()));
    }
    let half = a.len() / 2;
    out.push(ByteView::fused(&a[..half], &a[half..]));
    out.push(ByteView::from_reader(&mut &a[..], a.len()).expect("read from a slice"));
    let mut written = ByteView::with_size(a.len());
    written
        .get_mut()
        .expect("a new view is not shared")
        .copy_from_slice(a);
    out.push(written);
    let parent = ByteView::from(&vec![0xEEu8; a.len() + 9][..]);
    let mut cut = parent.slice(9..);
    drop(parent);
    cut.get_mut()
        .expect("the cut is the only view of its bytes")
        .copy_from_slice(a);
    out.push(cut);
    out
}

/// Every view of `a` against every view of `b` orders (and equals) as `a` against `b`, and
/// lsm-tree's `Slice` does too.
fn check(a: &[u8], b: &[u8]) {
    let want = a.cmp(b);
    for x in &views(a) {
        assert_eq!(&x[..], a);
        for y in &views(b) {
            assert_eq!(x.cmp(y), want, "{a:02x?} against {b:02x?}");
            assert_eq!(x.partial_cmp(y), Some(want), "{a:02x?} against {b:02x?}");
            assert_eq!(x == y, want == Ordering::Equal, "{a:02x?} == {b:02x?}");
        }
    }
    assert_eq!(
        lsm_tree::Slice::from(a).cmp(&lsm_tree::Slice::from(b)),
        want
    );
}

/// Every string of up to 5 bytes over bytes at the edges of the order (`00`, `01`, `80`,
/// `FF`), against every other: shorter and longer than the four bytes compared as one
/// integer, with `00` bytes where the integer's padding is.
#[test]
fn short_strings_of_edge_bytes_order_as_their_bytes() {
    let alphabet = [0x00u8, 0x01, 0x80, 0xFF];
    let mut strings: Vec<Vec<u8>> = vec![Vec::new()];
    let mut last: Vec<Vec<u8>> = vec![Vec::new()];
    for _ in 0..5 {
        last = last
            .iter()
            .flat_map(|s| {
                alphabet.iter().map(move |&c| {
                    let mut t = s.clone();
                    t.push(c);
                    t
                })
            })
            .collect();
        strings.extend(last.iter().cloned());
    }
    assert_eq!(strings.len(), 1 + 4 + 16 + 64 + 256 + 1024);
    let built: Vec<ByteView> = strings.iter().map(|s| ByteView::from(&s[..])).collect();
    for (a, x) in strings.iter().zip(&built) {
        for (b, y) in strings.iter().zip(&built) {
            assert_eq!(x.cmp(y), a.cmp(b), "{a:02x?} against {b:02x?}");
        }
    }
    // Views cut out of longer ones, for a sample (every 7th string, all of them is slow).
    for a in strings.iter().step_by(7) {
        for b in strings.iter().step_by(5) {
            check(a, b);
        }
    }
}

/// Lengths around each boundary of the views' layouts (the 4-byte prefix, the 16 bytes of
/// the first integer of an inline view, the 20 bytes an inline view holds on 64-bit targets)
/// with the strings differing in their last byte, or one a prefix of the other, or equal.
#[test]
fn strings_around_the_layout_boundaries_order_as_their_bytes() {
    for len in [3usize, 4, 5, 15, 16, 17, 19, 20, 21, 24] {
        let base: Vec<u8> = (0..len)
            .map(|i| u8::try_from(i * 37 % 251).unwrap_or(0))
            .collect();
        let mut bigger = base.clone();
        bigger[len - 1] = bigger[len - 1].wrapping_add(1);
        let mut zero_tail = base.clone();
        zero_tail.push(0);
        for (a, b) in [
            (&base, &bigger),
            (&base, &zero_tail),
            (&base, &base[..len - 1].to_vec()),
            (&base, &base),
            (&zero_tail, &bigger),
        ] {
            check(a, b);
            check(b, a);
        }
    }
}

/// A byte from the edges of the order more often than not.
fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![Just(0x00u8), Just(0xFF), Just(0x01), any::<u8>()]
}

proptest! {
    /// Two strings of up to 48 bytes, the second made from the first (cut, extended, one byte
    /// changed), so that they often share a prefix, order as their bytes.
    #[test]
    fn related_strings_order_as_their_bytes(
        a in prop::collection::vec(byte(), 0..48),
        keep in 0usize..48,
        extra in prop::collection::vec(byte(), 0..8),
        change in prop::option::of((0usize..48, byte())),
    ) {
        let mut b: Vec<u8> = a[..keep.min(a.len())].to_vec();
        b.extend_from_slice(&extra);
        if let Some((at, to)) = change
            && !b.is_empty()
        {
            let at = at % b.len();
            b[at] = to;
        }
        check(&a, &b);
        check(&b, &a);
    }
}
