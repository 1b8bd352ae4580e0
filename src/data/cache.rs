//! The decoded-image cache: one slot of `img_size² × 3` bytes for each of the first `capacity`
//! images of a data set, all in one allocation that the system zeroes lazily. A slot's pages
//! become resident only when its image is stored, so the cache's memory grows with what it
//! holds and never past `capacity` slots, and, living apart from the allocator's heap, it
//! cannot leave freed holes between long-lived images (which cost more than the images
//! themselves when each had its own allocation).

use std::sync::atomic::{AtomicU8, Ordering};

/// A slot's state: nothing stored yet.
const EMPTY: u8 = 0;
/// One thread is storing the image; others treat the slot as empty.
const FILLING: u8 = 1;
/// The image is stored and may be read by any thread.
const READY: u8 = 2;

/// Images by index, stored once and read any number of times from any thread.
pub(super) struct ImageCache {
    image_bytes: usize,
    /// One state per slot ([`EMPTY`], [`FILLING`], [`READY`]).
    states: Box<[AtomicU8]>,
    /// `capacity × image_bytes` bytes, slot after slot.
    pixels: Box<[AtomicU8]>,
}

impl ImageCache {
    /// A cache of `capacity` images of `image_bytes` each; nothing is resident yet.
    pub fn new(capacity: usize, image_bytes: usize) -> ImageCache {
        let zeroed = |len: usize| {
            // SAFETY: an all-zero AtomicU8 is a valid AtomicU8 (0), as for u8.
            unsafe { Box::<[AtomicU8]>::new_zeroed_slice(len).assume_init() }
        };
        ImageCache { image_bytes, states: zeroed(capacity), pixels: zeroed(capacity * image_bytes) }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.states.len()
    }

    /// Bytes one image takes in the cache: its pixels and its state.
    pub fn cost_per_image(image_bytes: usize) -> usize {
        image_bytes + 1
    }

    /// A copy of image `i`, if it is stored.
    pub fn get(&self, i: usize) -> Option<Vec<u8>> {
        let state = self.states.get(i)?;
        if state.load(Ordering::Acquire) != READY {
            return None;
        }
        Some(self.slot(i).iter().map(|b| b.load(Ordering::Relaxed)).collect())
    }

    /// Stores `pixels` as image `i` unless it has a slot no more, or is stored (or being
    /// stored) already.
    pub fn put(&self, i: usize, pixels: &[u8]) {
        assert_eq!(pixels.len(), self.image_bytes, "every image of a data set has the same size");
        let Some(state) = self.states.get(i) else { return };
        if state.compare_exchange(EMPTY, FILLING, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return;
        }
        for (cell, &byte) in self.slot(i).iter().zip(pixels) {
            cell.store(byte, Ordering::Relaxed);
        }
        state.store(READY, Ordering::Release);
    }

    fn slot(&self, i: usize) -> &[AtomicU8] {
        &self.pixels[i * self.image_bytes..(i + 1) * self.image_bytes]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_stored_once_and_read_back() {
        let cache = ImageCache::new(2, 3);
        assert_eq!(cache.capacity(), 2);
        assert_eq!(cache.get(0), None);
        cache.put(0, &[1, 2, 3]);
        cache.put(0, &[9, 9, 9]);
        cache.put(5, &[7, 7, 7]);
        assert_eq!(cache.get(0), Some(vec![1, 2, 3]));
        assert_eq!((cache.get(1), cache.get(5)), (None, None));
        cache.put(1, &[4, 5, 6]);
        assert_eq!(cache.get(1), Some(vec![4, 5, 6]));
    }

    #[test]
    fn an_empty_cache_holds_nothing() {
        let cache = ImageCache::new(0, 12);
        cache.put(0, &[0; 12]);
        assert_eq!((cache.capacity(), cache.get(0)), (0, None));
    }
}
