//! Colour swatches for the tray: PNG bytes for dbusmenu `icon-data`, ARGB32 pixmaps for the
//! StatusNotifierItem icon.
//!
//! The PNG writer is deliberately tiny (RGBA, one stored deflate block): swatches are a few
//! hundred bytes and a compression library would be dead weight.

/// A `size`×`size` rounded square in `rgb` with a darker border, as RGBA rows.
/// A stopped VM's swatch is drawn hollow so state shows even without reading the label.
fn swatch_rgba(rgb: [u8; 3], size: u32, filled: bool) -> Vec<u8> {
    let dark = rgb.map(|c| (u16::from(c) * 6 / 10) as u8);
    let mut out = Vec::with_capacity((size * size * 4) as usize);
    let last = size.saturating_sub(1);
    let border = (size / 8).max(1);
    for y in 0..size {
        for x in 0..size {
            let corner = (x == 0 || x == last) && (y == 0 || y == last);
            let edge = x < border || y < border || x > last - border || y > last - border;
            let px = if corner {
                [0, 0, 0, 0]
            } else if edge {
                [dark[0], dark[1], dark[2], 255]
            } else if filled {
                [rgb[0], rgb[1], rgb[2], 255]
            } else {
                [rgb[0], rgb[1], rgb[2], 70]
            };
            out.extend_from_slice(&px);
        }
    }
    out
}

/// PNG of a VM swatch for dbusmenu `icon-data`.
pub fn swatch_png(rgb: [u8; 3], size: u32, filled: bool) -> Vec<u8> {
    encode_png(size, size, &swatch_rgba(rgb, size, filled))
}

/// The tray icon: one swatch per VM in a grid, filled for VMs that are up.
/// Returns `(width, height, ARGB32 big-endian bytes)` as StatusNotifierItem wants.
pub fn tray_pixmap(vms: &[([u8; 3], bool)], size: u32) -> (i32, i32, Vec<u8>) {
    let n = vms.len().max(1);
    let cols = (n as f64).sqrt().ceil() as u32;
    let rows = (n as u32).div_ceil(cols);
    let cell = (size / cols.max(rows)).max(2);
    let mut argb = vec![0u8; (size * size * 4) as usize];
    let items: Vec<([u8; 3], bool)> = if vms.is_empty() {
        vec![([0x80, 0x80, 0x80], false)]
    } else {
        vms.to_vec()
    };
    for (i, (rgb, up)) in items.iter().enumerate() {
        let (cx, cy) = ((i as u32 % cols) * cell, (i as u32 / cols) * cell);
        let sw = swatch_rgba(*rgb, cell.saturating_sub(1).max(1), *up);
        let side = cell.saturating_sub(1).max(1);
        for y in 0..side {
            for x in 0..side {
                let (px, py) = (cx + x, cy + y);
                if px >= size || py >= size {
                    continue;
                }
                let s = ((y * side + x) * 4) as usize;
                let d = ((py * size + px) * 4) as usize;
                argb[d] = sw[s + 3];
                argb[d + 1] = sw[s];
                argb[d + 2] = sw[s + 1];
                argb[d + 3] = sw[s + 2];
            }
        }
    }
    (size as i32, size as i32, argb)
}

/// Encode RGBA8 rows as a PNG (stored, uncompressed deflate blocks).
pub fn encode_png(width: u32, height: u32, rgba: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(rgba.len() + height as usize);
    for row in rgba.chunks((width * 4) as usize) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut z = vec![0x78, 0x01];
    let mut chunks = raw.chunks(65535).peekable();
    if chunks.peek().is_none() {
        z.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = chunks.next() {
        z.push(u8::from(chunks.peek().is_none()));
        let len = block.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(block);
    }
    z.extend_from_slice(&adler32(&raw).to_be_bytes());

    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &z);
    chunk(&mut png, b"IEND", &[]);
    png
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// CRC-32 (IEEE), as PNG chunks use.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Adler-32, as zlib streams end with.
pub fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_known_values() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
    }

    #[test]
    fn png_has_the_right_shape() {
        let png = swatch_png([255, 0, 0], 16, true);
        assert_eq!(crate::desktop::icon::png_size(&png), Some((16, 16)));
        assert!(png.ends_with(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xae, 0x42, 0x60, 0x82]));
    }

    #[test]
    fn pixmap_marks_running_vms() {
        let (w, h, argb) = tray_pixmap(&[([255, 0, 0], true), ([0, 0, 255], false)], 22);
        assert_eq!((w, h), (22, 22));
        assert_eq!(argb.len(), 22 * 22 * 4);
        // Centre of the first cell is opaque red; of the second, translucent blue.
        let at = |x: usize, y: usize| &argb[(y * 22 + x) * 4..(y * 22 + x) * 4 + 4];
        assert_eq!(at(5, 5), [255, 255, 0, 0]);
        assert_eq!(at(16, 5), [70, 0, 0, 255]);
    }
}
