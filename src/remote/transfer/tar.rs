//! Just enough of the GNU tar format to stream uploads into `tar -x` on the builder: headers
//! for files, directories and symlinks, with GNU long-name records for paths over 100 bytes
//! and base-256 sizes beyond 8 GiB. File data is written by the caller after the header.

pub const BLOCK: usize = 512;

pub enum Kind<'a> {
    File { size: u64 },
    Dir,
    Symlink { target: &'a str },
}

/// Ownership as the builder should apply it. Names win when the builder knows them (tar as
/// root looks them up); the numbers are the fallback.
#[derive(Debug, Clone, Default)]
pub struct Owner {
    pub uid: u64,
    pub gid: u64,
    pub uname: String,
    pub gname: String,
}

/// Appends the header(s) for one entry to `out`.
pub fn header(
    out: &mut Vec<u8>,
    path: &str,
    kind: &Kind<'_>,
    mode: u32,
    owner: &Owner,
    mtime: u64,
) {
    let name = match kind {
        Kind::Dir if !path.ends_with('/') => format!("{path}/"),
        _ => path.to_string(),
    };
    if name.len() > 100 {
        long_record(out, b'L', &name);
    }
    if let Kind::Symlink { target } = kind
        && target.len() > 100
    {
        long_record(out, b'K', target);
    }
    let (size, flag, link) = match kind {
        Kind::File { size } => (*size, b'0', ""),
        Kind::Dir => (0, b'5', ""),
        Kind::Symlink { target } => (0, b'2', *target),
    };
    raw_header(
        out,
        &Fields {
            name: truncate(&name, 100),
            size,
            flag,
            link: truncate(link, 100),
            mode,
            mtime,
        },
        owner,
    );
}

/// Zero padding after `size` bytes of file data.
pub fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// The end-of-archive marker.
pub fn finish(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0u8; 2 * BLOCK]);
}

fn truncate(s: &str, max: usize) -> &[u8] {
    let b = s.as_bytes();
    &b[..b.len().min(max)]
}

fn long_record(out: &mut Vec<u8>, flag: u8, value: &str) {
    let data = value.as_bytes();
    let size = data.len() as u64 + 1;
    raw_header(
        out,
        &Fields {
            name: b"././@LongLink",
            size,
            flag,
            link: b"",
            mode: 0o644,
            mtime: 0,
        },
        &Owner::default(),
    );
    out.extend_from_slice(data);
    out.push(0);
    out.extend(std::iter::repeat_n(0u8, padding(size)));
}

/// One header block's fields, already cut to the lengths the format holds.
struct Fields<'a> {
    name: &'a [u8],
    size: u64,
    flag: u8,
    link: &'a [u8],
    mode: u32,
    mtime: u64,
}

fn raw_header(out: &mut Vec<u8>, f: &Fields<'_>, owner: &Owner) {
    let Fields {
        name,
        size,
        flag,
        link,
        mode,
        mtime,
    } = *f;
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], u64::from(mode & 0o7777));
    numeric(&mut h[108..116], owner.uid);
    numeric(&mut h[116..124], owner.gid);
    numeric(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = flag;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..265].copy_from_slice(b"ustar  \0");
    let un = truncate(&owner.uname, 31);
    h[265..265 + un.len()].copy_from_slice(un);
    let gn = truncate(&owner.gname, 31);
    h[297..297 + gn.len()].copy_from_slice(gn);
    // The checksum is computed with its own field taken as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let cks = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(cks.as_bytes());
    out.extend_from_slice(&h);
}

/// Zero-padded octal with a trailing NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

/// Octal when it fits, otherwise GNU base-256 (high bit set, big-endian).
fn numeric(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    if value < 8u64.pow(digits as u32) {
        octal(field, value);
    } else {
        field.fill(0);
        let bytes = value.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&bytes);
        field[0] |= 0x80;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_one_block_with_valid_checksum() {
        let mut out = Vec::new();
        header(
            &mut out,
            "opt/app.bin",
            &Kind::File { size: 5 },
            0o755,
            &Owner::default(),
            1,
        );
        assert_eq!(out.len(), BLOCK);
        assert_eq!(&out[124..136], b"00000000005\0");
        let mut h = out.clone();
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(
            std::str::from_utf8(&out[148..154]).unwrap(),
            format!("{sum:06o}")
        );
    }

    #[test]
    fn long_names_and_huge_sizes() {
        let mut out = Vec::new();
        let long = "d/".repeat(80) + "file";
        header(
            &mut out,
            &long,
            &Kind::File { size: 1 << 40 },
            0o644,
            &Owner::default(),
            1,
        );
        // long-name header + name data (161 bytes -> 1 block) + real header
        assert_eq!(out.len(), 3 * BLOCK);
        assert_eq!(out[2 * BLOCK + 124] & 0x80, 0x80);
        assert_eq!(padding(5), 507);
        assert_eq!(padding(512), 0);
    }
}
