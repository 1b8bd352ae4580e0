//! Whether a JPEG's data reaches its end-of-image marker (EOI), walked the way libjpeg reads
//! it: marker segments skipped by their length, entropy-coded data skipped to the next marker
//! (`FF 00` is a stuffed byte, `FF D0`–`FF D7` are restart markers, runs of `FF` are fill),
//! stray bytes between markers skipped. A file whose walk runs out of data before EOI is one
//! that made libjpeg read past its end: a truncated file, which PIL refuses ("image file is
//! truncated") unless `ImageFile.LOAD_TRUNCATED_IMAGES` is set. An EOI inside a skipped
//! segment (an EXIF thumbnail's) does not count, as libjpeg never sees it.

/// Whether `bytes` (a JPEG starting with SOI) reaches its EOI marker.
pub(super) fn reaches_end_marker(bytes: &[u8]) -> bool {
    let n = bytes.len();
    let mut i = 2; // after SOI
    loop {
        // Entropy-coded data or stray bytes up to the next 0xFF, then any fill 0xFFs.
        while i < n && bytes[i] != 0xFF {
            i += 1;
        }
        while i < n && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else { return false };
        i += 1;
        match marker {
            0xD9 => return true,
            // A stuffed 0xFF, a restart marker, TEM or a repeated SOI: no length follows.
            0x00 | 0x01 | 0xD0..=0xD8 => {}
            _ => {
                let Some(len) = bytes.get(i..i + 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
                else {
                    return false;
                };
                if len < 2 {
                    return false; // libjpeg stops on a bogus length
                }
                i += len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SOI, a 4-byte COM segment holding FF D9, SOS with a 2-byte header, entropy data with a
    /// stuffed byte and a restart marker, then EOI.
    fn tiny() -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8, 0xFF, 0xFE, 0x00, 0x04, 0xFF, 0xD9, 0xFF, 0xDA, 0x00, 0x02];
        b.extend([0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD3, 0x56, 0xFF, 0xFF, 0xD9]);
        b
    }

    #[test]
    fn whole_data_reaches_eoi_and_truncated_data_does_not() {
        let b = tiny();
        assert!(reaches_end_marker(&b));
        for cut in 2..b.len() {
            assert!(
                !reaches_end_marker(&b[..cut]),
                "cut at {cut}: the EOI inside the comment does not count"
            );
        }
        // Stray bytes before EOI and garbage after it change nothing.
        let mut stray = b[..b.len() - 2].to_vec();
        stray.extend([0u8; 64]);
        stray.extend([0xFF, 0xD9]);
        assert!(reaches_end_marker(&stray));
        let mut after = b.clone();
        after.extend([0x00, 0xFF, 0x12]);
        assert!(reaches_end_marker(&after));
        // A segment length running past the end, and a bogus length.
        assert!(!reaches_end_marker(&[0xFF, 0xD8, 0xFF, 0xE1, 0x40, 0x00, 0xFF, 0xD9]));
        assert!(!reaches_end_marker(&[0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x01, 0xFF, 0xD9]));
    }
}
