//! A git packfile of a new commit — its blobs, the trees on their paths and the commit — written in
//! one pass without delta compression, with its index: a sync that adds thousands of files puts
//! one pack into the repository instead of thousands of object writes (libgit2 looks every new
//! object up before writing it, and rescans the pack directory on each miss) or a pack that
//! libgit2's packbuilder delta-compresses object by object (seconds for the two 10,000-entry trees
//! of a large repository). The formats are git's (gitformat-pack): the pack is "PACK", version 2,
//! the object count, each object as a type-and-size header and its zlib-deflated bytes, then the
//! SHA-1 of everything before it; its index (version 2) lists every object's id, sorted, with the
//! CRC-32 of its entry and its offset. The index is written here, from what each entry was made
//! of, not by libgit2's indexer, which inflated and hashed (with collision detection) every object
//! again: 13% of a full sync of 10,000 PRs. `git verify-pack`, which indexes the pack again and
//! checks the index against it, is this file's test. A later `git gc`
//! delta-compresses the pack if anyone wants it smaller. The entries go to a temporary file beside
//! the repository's packs as they are made, not to memory: the header's count and the trailing
//! checksum are known only at the end, and a full sync's pack is a third the size of the rendered
//! tree that is still in memory beside it.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::path::Path;

use flate2::{Compress, Compression, FlushCompress, Status};
use rustc_hash::FxHashSet;
use sha1::{Digest, Sha1};
use tempfile::NamedTempFile;

use crate::model::layout::BlobId;
use crate::model::parallel;

/// git's object type numbers in a pack entry header.
const OBJ_COMMIT: u8 = 1;
const OBJ_TREE: u8 = 2;
const OBJ_BLOB: u8 = 3;

/// A loose tree at least this large is stored uncompressed (see [`write_loose`]).
const STORED_TREE: usize = 16 << 10;

/// Bytes copied from the body file to the pack's reader at a time.
const COPY_CHUNK: usize = 1 << 20;

/// Bytes of blob content deflated, on every core, before their entries are written.
const BATCH: usize = 1 << 20;

/// The pack being built, each object once, in a temporary file: a header to be filled in, then
/// the entries; and what the index needs of each entry.
pub struct BlobPack {
    file: BufWriter<NamedTempFile>,
    /// The offset of the next entry in the pack.
    offset: u64,
    index: Vec<IndexEntry>,
    seen: FxHashSet<BlobId>,
    /// Trees added and not yet written, with their bytes: they come one at a time, on the main
    /// thread, as the directories are walked, and are deflated side by side in batches of
    /// [`BATCH`] bytes like blobs (a full sync of 10,000 environments writes 20,000 of them).
    trees: Vec<([u8; 20], Vec<u8>)>,
    tree_bytes: usize,
    /// One compressor for the entries added one at a time, reset between them, and the buffers it
    /// writes into: a new compressor allocates and zeroes its tables, which cost more than
    /// deflating a small file.
    coder: Coder,
    encoded: Vec<u8>,
}

/// A compressor and its output buffer, turning objects into pack entries.
struct Coder {
    zlib: Compress,
    deflated: Vec<u8>,
}

impl Coder {
    fn new() -> Coder {
        Coder {
            zlib: Compress::new(Compression::fast(), true),
            deflated: Vec::new(),
        }
    }

    /// Appends the pack entry of an object of `kind` to `out` and returns the entry's length and
    /// its CRC-32. The header is the type and size: the first byte holds the type and the size's
    /// low 4 bits, each next byte 7 more bits, the high bit saying another byte follows.
    fn encode(&mut self, kind: u8, content: &[u8], out: &mut Vec<u8>) -> std::io::Result<(u64, u32)> {
        let start = out.len();
        let mut size = content.len();
        let mut byte = (kind << 4) | (size & 0x0f) as u8;
        size >>= 4;
        while size > 0 {
            out.push(byte | 0x80);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        out.push(byte);
        deflate(&mut self.zlib, &[content], &mut self.deflated)?;
        out.extend_from_slice(&self.deflated);
        let entry = &out[start..];
        Ok((entry.len() as u64, zlib_rs::crc32::crc32(0, entry)))
    }
}

/// The entries of a batch of blobs, encoded on one thread: their bytes one after another, and
/// each one's id, length and CRC-32.
struct Encoded {
    bytes: Vec<u8>,
    entries: Vec<([u8; 20], u64, u32)>,
}

/// One object of a pack as its index lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct IndexEntry {
    id: [u8; 20],
    /// The CRC-32 of the entry's bytes in the pack: its header and its deflated body.
    crc: u32,
    offset: u64,
}

/// The pack header's length: "PACK", the version, the object count.
const PACK_HEADER: u64 = 12;

impl BlobPack {
    /// A pack written to a temporary file in `dir`, the repository's pack directory, where it is
    /// renamed when finished. A run killed before leaves a `tmp_pack_*` file, which `git prune`
    /// removes as git's own (builtin/prune.c `remove_temporary_files` on the pack directory).
    pub fn new(dir: &Path) -> std::io::Result<BlobPack> {
        let file = tempfile::Builder::new().prefix("tmp_pack_").tempfile_in(dir)?;
        let mut file = BufWriter::with_capacity(COPY_CHUNK, file);
        // Filled in by `finish`, when the count is known.
        file.write_all(&[0; PACK_HEADER as usize])?;
        Ok(BlobPack {
            file,
            offset: PACK_HEADER,
            index: Vec::new(),
            seen: FxHashSet::default(),
            trees: Vec::new(),
            tree_bytes: 0,
            coder: Coder::new(),
            encoded: Vec::new(),
        })
    }

    /// Adds a blob of `content` (once per distinct content) and returns its id.
    pub fn add(&mut self, content: &[u8]) -> std::io::Result<BlobId> {
        let id = BlobId::of(content);
        if self.seen.insert(id) {
            self.entry(OBJ_BLOB, id.0, content)?;
        }
        Ok(id)
    }

    /// Adds a tree object (its body: the entries in git's order) and returns its id. Its entry
    /// is written later, with other trees (a pack's objects may come in any order).
    pub fn add_tree(&mut self, body: &[u8]) -> std::io::Result<[u8; 20]> {
        let id = object_id("tree", body);
        if self.seen.insert(BlobId(id)) {
            self.trees.push((id, body.to_vec()));
            self.tree_bytes += body.len();
            if self.tree_bytes >= BATCH {
                self.write_trees()?;
            }
        }
        Ok(id)
    }

    fn write_trees(&mut self) -> std::io::Result<()> {
        let trees = std::mem::take(&mut self.trees);
        self.tree_bytes = 0;
        let bodies: Vec<([u8; 20], &[u8])> = trees.iter().map(|(id, body)| (*id, body.as_slice())).collect();
        self.write_entries(OBJ_TREE, &bodies)
    }

    /// Adds a commit object and returns its id.
    pub fn add_commit(&mut self, body: &[u8]) -> std::io::Result<[u8; 20]> {
        let id = object_id("commit", body);
        if self.seen.insert(BlobId(id)) {
            self.entry(OBJ_COMMIT, id, body)?;
        }
        Ok(id)
    }

    /// Adds the blobs of `contents` (once per distinct content) and returns their ids, in order.
    /// Hashing and deflating them are most of a large commit's work, so they are spread over the
    /// cores: the ids at once, the entries in batches of [`BATCH`] bytes of content, which bound
    /// the deflated bytes held at a time. The entries are written in the order `add` would write
    /// them one by one, so the pack is the same bytes.
    pub fn add_all(&mut self, contents: &[&[u8]]) -> std::io::Result<Vec<BlobId>> {
        let ids = parallel::map(contents, |content| BlobId::of(content));
        let mut batch = Vec::new();
        let mut bytes = 0;
        for (id, content) in ids.iter().zip(contents) {
            if self.seen.insert(*id) {
                batch.push((id.0, *content));
                bytes += content.len();
                if bytes >= BATCH {
                    self.write_entries(OBJ_BLOB, &batch)?;
                    batch.clear();
                    bytes = 0;
                }
            }
        }
        self.write_entries(OBJ_BLOB, &batch)?;
        Ok(ids)
    }

    /// Writes the entries of `objects` of `kind`, each part of them encoded on a core of its own.
    fn write_entries(&mut self, kind: u8, objects: &[([u8; 20], &[u8])]) -> std::io::Result<()> {
        let parts = parallel::by_cores(objects, |part| {
            let mut coder = Coder::new();
            let mut encoded = Encoded {
                bytes: Vec::with_capacity(part.iter().map(|(_, c)| c.len()).sum::<usize>() / 2),
                entries: Vec::with_capacity(part.len()),
            };
            for (id, content) in part {
                let (len, crc) = coder.encode(kind, content, &mut encoded.bytes)?;
                encoded.entries.push((*id, len, crc));
            }
            Ok::<_, std::io::Error>(encoded)
        });
        for part in parts {
            let part = part?;
            self.file.write_all(&part.bytes)?;
            for (id, len, crc) in part.entries {
                self.push(id, len, crc);
            }
        }
        Ok(())
    }

    fn entry(&mut self, kind: u8, id: [u8; 20], content: &[u8]) -> std::io::Result<()> {
        self.encoded.clear();
        let (len, crc) = self.coder.encode(kind, content, &mut self.encoded)?;
        self.file.write_all(&self.encoded)?;
        self.push(id, len, crc);
        Ok(())
    }

    /// Records an entry of `len` bytes just written at the end of the pack.
    fn push(&mut self, id: [u8; 20], len: u64, crc: u32) {
        self.index.push(IndexEntry {
            id,
            crc,
            offset: self.offset,
        });
        self.offset += len;
    }

    /// Finishes the pack — the header with the count, the SHA-1 of everything at the end — and
    /// puts it and its index into `dir` as `pack-<checksum>.pack` and `.idx`, read-only. The pack
    /// is renamed into place first, then the index, as git does (`finish_tmp_packfile`): readers
    /// find packs by their index, so none sees a pack before all of it is there. Returns the
    /// index's path.
    pub fn finish(mut self, dir: &Path) -> std::io::Result<std::path::PathBuf> {
        self.write_trees()?;
        let BlobPack { file, mut index, .. } = self;
        let mut file = file.into_inner().map_err(std::io::IntoInnerError::into_error)?;
        let count =
            u32::try_from(index.len()).map_err(|_| std::io::Error::other("more objects than a pack can hold"))?;
        let mut header = Vec::with_capacity(PACK_HEADER as usize);
        header.extend_from_slice(b"PACK");
        header.extend_from_slice(&2u32.to_be_bytes());
        header.extend_from_slice(&count.to_be_bytes());
        let out = file.as_file_mut();
        out.rewind()?;
        out.write_all(&header)?;
        out.rewind()?;
        let mut sum = Sha1::new();
        let mut chunk = vec![0; COPY_CHUNK];
        loop {
            let n = out.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            sum.update(&chunk[..n]);
        }
        let checksum: [u8; 20] = sum.finalize().into();
        out.write_all(&checksum)?;
        let name = format!("pack-{}", hex::encode(checksum));
        index.sort_unstable();
        let mut idx = tempfile::Builder::new().prefix("tmp_idx_").tempfile_in(dir)?;
        idx.write_all(&index_bytes(&index, &checksum))?;
        for tmp in [&file, &idx] {
            tmp.as_file().set_permissions(read_only())?;
        }
        file.persist(dir.join(format!("{name}.pack")))?;
        let path = dir.join(format!("{name}.idx"));
        idx.persist(&path)?;
        Ok(path)
    }
}

/// git's packs and indexes are read-only (`0444`).
fn read_only() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o444)
}

/// A version 2 pack index of `entries` (sorted by id) for the pack whose checksum is `pack`: the
/// magic and version, the fan-out (how many ids start with a byte at most each value), the ids,
/// their entries' CRC-32s, their offsets (those from 2 GiB on as an index, high bit set, into a
/// table of 8-byte offsets after them), the pack's checksum, and the SHA-1 of all that.
fn index_bytes(entries: &[IndexEntry], pack: &[u8; 20]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 256 * 4 + entries.len() * 28 + 40);
    out.extend_from_slice(b"\xfftOc");
    out.extend_from_slice(&2u32.to_be_bytes());
    let mut fanout = [0u32; 256];
    for e in entries {
        fanout[usize::from(e.id[0])] += 1;
    }
    let mut below = 0;
    for n in fanout {
        below += n;
        out.extend_from_slice(&below.to_be_bytes());
    }
    for e in entries {
        out.extend_from_slice(&e.id);
    }
    for e in entries {
        out.extend_from_slice(&e.crc.to_be_bytes());
    }
    let mut large = Vec::new();
    for e in entries {
        let small = match u32::try_from(e.offset) {
            Ok(offset) if offset < 1 << 31 => offset,
            _ => {
                large.push(e.offset);
                (1 << 31) | (large.len() as u32 - 1)
            }
        };
        out.extend_from_slice(&small.to_be_bytes());
    }
    for offset in large {
        out.extend_from_slice(&offset.to_be_bytes());
    }
    out.extend_from_slice(pack);
    let sum: [u8; 20] = Sha1::digest(&out).into();
    out.extend_from_slice(&sum);
    out
}

/// Writes one object loose into the object directory `objects` (as git does: zlib-deflated
/// `<kind> <len>\0<body>` at `objects/<2 hex>/<38 hex>`, written to a temporary file beside it and
/// renamed into place, read-only) and returns its id; an object already there is left as it is.
/// libgit2's own loose write hashed with collision detection and deflated at zlib's default
/// level: for the two 10,000-entry trees every incremental commit rewrites, a third of that
/// sync. A temporary file left by a killed run is named `tmp_obj_*`, which `git prune` removes
/// (builtin/prune.c `prune_tmp_file`).
///
/// A large tree is stored in the zlib stream without compression (git's `core.looseCompression
/// = 0`): half of a tree is SHA-1 ids, which do not compress, so level 1 saves only about 40% of a
/// 10,000-entry tree (389 KB -> 243 KB), and deflating the two such trees an incremental sync
/// writes, then inflating them when the next sync reads them, was a seventh of that sync (47 ->
/// 40 ms). `git gc`, or a push, packs and compresses them like any object.
pub fn write_loose(objects: &Path, kind: &str, body: &[u8]) -> std::io::Result<[u8; 20]> {
    LooseWriter::new(objects).write(kind, body)
}

/// Writes a commit's objects loose into one object directory, as [`write_loose`] does each: one
/// compressor (and one output buffer) serves them all. A compressor allocates and zeroes a few
/// hundred kilobytes of tables; made afresh for each of the ten objects of an incremental commit,
/// those were a quarter of the memory the sync touched for the first time (a page fault each 4 KB).
pub struct LooseWriter {
    objects: std::path::PathBuf,
    zlib: Option<Compress>,
    out: Vec<u8>,
}

impl LooseWriter {
    pub fn new(objects: &Path) -> LooseWriter {
        LooseWriter {
            objects: objects.to_path_buf(),
            zlib: None,
            out: Vec::new(),
        }
    }

    /// Writes one object (see [`write_loose`]) and returns its id.
    pub fn write(&mut self, kind: &str, body: &[u8]) -> std::io::Result<[u8; 20]> {
        let header = object_header(kind, body.len());
        let id = id_of(&header, body);
        let path = loose_path(&self.objects, &id);
        if path.exists() {
            return Ok(id);
        }
        let dir = path.parent().expect("a loose object's path has its directory");
        std::fs::create_dir_all(dir)?;
        let parts = [header.as_bytes(), body];
        if kind == "tree" && body.len() >= STORED_TREE {
            stored(&parts, &mut self.out);
        } else {
            let zlib = self
                .zlib
                .get_or_insert_with(|| Compress::new(Compression::fast(), true));
            deflate(zlib, &parts, &mut self.out)?;
        }
        let mut file = tempfile::Builder::new().prefix("tmp_obj_").tempfile_in(dir)?;
        file.write_all(&self.out)?;
        let mut permissions = file.as_file().metadata()?.permissions();
        permissions.set_readonly(true);
        file.as_file().set_permissions(permissions)?;
        // Another writer may have put the same object there meanwhile: the same bytes either way.
        file.persist(&path).map_err(|e| e.error)?;
        Ok(id)
    }
}

/// The body of tree `id` when it is stored loose in `objects` the way [`LooseWriter`] writes a
/// large tree (a zlib stream of stored blocks), read straight into one buffer; `None` when it is
/// not there, is small, or is written otherwise (deflated by git, packed, damaged): then the caller
/// asks git, which reads it or says what is wrong. libgit2 read such a tree into one buffer,
/// inflated it into a second and handed out a third: for the two 10,000-entry trees a sync
/// reads, megabytes of memory touched for the first time.
pub fn read_stored_tree(objects: &Path, id: &[u8; 20], min_len: usize) -> Option<Vec<u8>> {
    /// `tree <decimal length>\0` fits in this many bytes.
    const HEAD: usize = 32;
    let mut file = File::open(loose_path(objects, id)).ok()?;
    let file_len = file.metadata().ok()?.len();
    if file_len < min_len as u64 {
        return None;
    }
    let mut zlib = [0u8; 2];
    file.read_exact(&mut zlib).ok()?;
    if zlib != [0x78, 0x01] {
        return None;
    }
    let (mut header, mut body, mut filled) = (Vec::new(), Vec::new(), 0usize);
    loop {
        let mut block = [0u8; 5];
        file.read_exact(&mut block).ok()?;
        // BFINAL in bit 0, BTYPE 00 (stored) in bits 1-2, the rest padding: anything else is
        // a compressed block.
        let last = match block[0] {
            0 => false,
            1 => true,
            _ => return None,
        };
        let len = u16::from_le_bytes([block[1], block[2]]);
        if len != !u16::from_le_bytes([block[3], block[4]]) {
            return None;
        }
        let mut len = len as usize;
        if header.is_empty() {
            let mut head = [0u8; HEAD];
            let n = len.min(HEAD);
            file.read_exact(&mut head[..n]).ok()?;
            let nul = head[..n].iter().position(|&b| b == 0)?;
            let size: usize = std::str::from_utf8(head[..nul].strip_prefix(b"tree ")?)
                .ok()?
                .parse()
                .ok()?;
            // Stored, the body is in the file byte for byte: a larger size is a damaged header,
            // not a reason to allocate it.
            if size as u64 > file_len {
                return None;
            }
            header.extend_from_slice(&head[..=nul]);
            body = vec![0; size];
            let rest = &head[nul + 1..n];
            body.get_mut(..rest.len())?.copy_from_slice(rest);
            filled = rest.len();
            len -= n;
        }
        file.read_exact(body.get_mut(filled..filled + len)?).ok()?;
        filled += len;
        if last {
            break;
        }
    }
    let mut trailer = [0u8; 4];
    file.read_exact(&mut trailer).ok()?;
    let whole = filled == body.len() && file.read(&mut [0u8; 1]).ok()? == 0;
    (whole && u32::from_be_bytes(trailer) == adler32(&[&header, &body])).then_some(body)
}

/// Where object `id` is kept loose below `objects`: `<2 hex>/<38 hex>`, as git keeps it.
fn loose_path(objects: &Path, id: &[u8; 20]) -> std::path::PathBuf {
    let hex = hex::encode(id);
    objects.join(&hex[..2]).join(&hex[2..])
}

/// `parts`, one after the other, as a zlib stream of stored (uncompressed) deflate blocks in `out`
/// (cleared first), written directly: RFC 1950's two-byte header (deflate, 32 KB window, no
/// dictionary, "fastest"), RFC 1951's stored blocks of at most 65,535 bytes (BFINAL and BTYPE 00,
/// the length and its complement, the bytes) and the Adler-32 of the data. What zlib writes at
/// level 0, without a compressor's tables.
fn stored(parts: &[&[u8]], out: &mut Vec<u8>) {
    const BLOCK: usize = 65_535;
    let total: usize = parts.iter().map(|p| p.len()).sum();
    out.clear();
    out.reserve(total + total / BLOCK * 5 + 16);
    out.extend_from_slice(&[0x78, 0x01]);
    // Bytes not yet written, and what the open block still takes.
    let (mut left, mut room) = (total, 0usize);
    for part in parts {
        let mut part = *part;
        while !part.is_empty() {
            if room == 0 {
                let len = BLOCK.min(left);
                out.push(u8::from(len == left));
                out.extend_from_slice(&(len as u16).to_le_bytes());
                out.extend_from_slice(&(!(len as u16)).to_le_bytes());
                room = len;
            }
            let take = part.len().min(room);
            out.extend_from_slice(&part[..take]);
            part = &part[take..];
            room -= take;
            left -= take;
        }
    }
    if total == 0 {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    out.extend_from_slice(&adler32(parts).to_be_bytes());
}

/// The Adler-32 checksum (RFC 1950 section 8.2) of `parts`, one after the other: zlib-rs's,
/// with AVX2 where the CPU has it (a byte at a time was a tenth of a small commit's work beside
/// the two 10,000-entry trees it stores).
fn adler32(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(1, |sum, part| zlib_rs::adler32::adler32(sum, part))
}

/// `parts`, one after the other, as one zlib stream in `out` (cleared first); `zlib` is reset
/// first, so one compressor serves many streams.
fn deflate(zlib: &mut Compress, parts: &[&[u8]], out: &mut Vec<u8>) -> std::io::Result<()> {
    zlib.reset();
    out.clear();
    // Room for what YAML deflates to (under half); the loop makes more for what does not.
    out.reserve(parts.iter().map(|p| p.len()).sum::<usize>() / 2 + 64);
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let flush = if last {
            FlushCompress::Finish
        } else {
            FlushCompress::None
        };
        let start = zlib.total_in();
        loop {
            let consumed = (zlib.total_in() - start) as usize;
            let status = zlib
                .compress_vec(&part[consumed..], out, flush)
                .map_err(std::io::Error::other)?;
            let done = if last {
                status == Status::StreamEnd
            } else {
                (zlib.total_in() - start) as usize == part.len()
            };
            if done {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
    }
    Ok(())
}

/// git's id of an object: SHA-1 of `<kind> <len>\0` and the body.
fn object_id(kind: &str, body: &[u8]) -> [u8; 20] {
    id_of(&object_header(kind, body.len()), body)
}

/// What precedes an object's body in its id and in a loose object: `<kind> <len>\0`.
fn object_header(kind: &str, len: usize) -> String {
    format!("{kind} {len}\0")
}

fn id_of(header: &str, body: &[u8]) -> [u8; 20] {
    let mut hasher = Sha1::new();
    hasher.update(header.as_bytes());
    hasher.update(body);
    hasher.finalize().into()
}

/// The mode of a directory entry.
pub const MODE_TREE: u32 = 0o40000;
/// The mode of a plain file.
pub const MODE_FILE: u32 = 0o100644;

/// One entry of a tree's body, borrowed from it: its octal mode as written, name and object id.
/// 24 bytes, not five fields of their own: a tree of 10,000 environments is listed a few times a
/// sync, and listings of 64-byte entries were megabytes of memory touched for the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEntry<'a> {
    /// The whole entry, `<mode> <name>\0<20-byte id>`.
    bytes: &'a [u8],
    /// Where it starts in the tree's body.
    start: u32,
    /// The length of its mode.
    mode_len: u8,
}

impl<'a> RawEntry<'a> {
    pub fn mode(&self) -> &'a [u8] {
        &self.bytes[..self.mode_len as usize]
    }

    pub fn name(&self) -> &'a [u8] {
        &self.bytes[self.mode_len as usize + 1..self.bytes.len() - 21]
    }

    /// The entry's object id.
    pub fn id_bytes(&self) -> [u8; 20] {
        self.bytes[self.bytes.len() - 20..]
            .try_into()
            .expect("raw_entries takes 20 bytes for an id")
    }

    /// Where the whole entry starts and ends in the tree's body.
    pub fn span(&self) -> std::ops::Range<usize> {
        let start = self.start as usize;
        start..start + self.bytes.len()
    }

    fn is_tree(&self) -> bool {
        self.mode() == b"40000"
    }
}

/// The entries of a tree's body (`<mode> <name>\0<20-byte id>` each, gitformat-tree), in the
/// order they are stored; `None` when the body is not a tree (or is one no git writes: a mode of
/// more than 255 bytes, a body of 4 GiB).
pub fn raw_entries(body: &[u8]) -> Option<Vec<RawEntry<'_>>> {
    u32::try_from(body.len()).ok()?;
    let mut out = Vec::with_capacity(body.len() / 40);
    let mut rest = body;
    while !rest.is_empty() {
        // The mode holds no NUL and the name no NUL: the first NUL ends the name.
        let nul = memchr::memchr(0, rest)?;
        let space = rest[..nul].iter().position(|&b| b == b' ')?;
        let bytes = rest.get(..nul + 21)?;
        out.push(RawEntry {
            bytes,
            start: (body.len() - rest.len()) as u32,
            mode_len: u8::try_from(space).ok()?,
        });
        rest = &rest[nul + 21..];
    }
    Some(out)
}

/// Git's order of tree entries: by name, a directory's name compared as if it ended in `/`
/// (git `tree.c` `base_name_compare`).
fn git_order(a: &[u8], a_tree: bool, b: &[u8], b_tree: bool) -> std::cmp::Ordering {
    let n = a.len().min(b.len());
    a[..n].cmp(&b[..n]).then_with(|| {
        let end = |name: &[u8], tree: bool| match name.get(n) {
            Some(&c) => c,
            None if tree => b'/',
            None => 0,
        };
        end(a, a_tree).cmp(&end(b, b_tree))
    })
}

/// The entry of directory `name` among `entries` (sorted as git sorts them), found by bisection.
pub fn find_dir<'a>(entries: &[RawEntry<'a>], name: &str) -> Option<RawEntry<'a>> {
    let i = entries
        .binary_search_by(|e| git_order(e.name(), e.is_tree(), name.as_bytes(), true))
        .ok()?;
    Some(entries[i]).filter(|e| e.is_tree())
}

/// The entry of `entries` (a tree's, in git's order) that is a file named `name`.
pub fn find_file<'a>(entries: &[RawEntry<'a>], name: &str) -> Option<RawEntry<'a>> {
    let i = entries
        .binary_search_by(|e| git_order(e.name(), e.is_tree(), name.as_bytes(), false))
        .ok()?;
    Some(entries[i]).filter(|e| !e.is_tree())
}

/// A change to one entry of a tree: its name, and its new mode and id (`None`: removed).
pub type Change<'a> = (&'a str, Option<(u32, [u8; 20])>);

/// The body the tree `body` (whose entries, as [`raw_entries`] reads them, are `base`) becomes
/// with `changes` applied: a name with
/// a mode and id is added or replaces the entry of that name (of either kind), a name with `None`
/// is removed. Every untouched entry is copied as it is, whatever its mode or name bytes, so a
/// sync never changes what it did not mean to; the cost is one pass over `base`.
pub fn splice_tree(body: &[u8], base: &[RawEntry<'_>], changes: &mut [Change<'_>]) -> Vec<u8> {
    let changed: rustc_hash::FxHashSet<&[u8]> = changes.iter().map(|(n, _)| n.as_bytes()).collect();
    changes.sort_by(|(a, x), (b, y)| {
        let tree = |v: &Option<(u32, [u8; 20])>| v.is_some_and(|(m, _)| m == MODE_TREE);
        git_order(a.as_bytes(), tree(x), b.as_bytes(), tree(y))
    });
    let mut added = changes
        .iter()
        .filter_map(|(n, v)| v.map(|(m, id)| (*n, m, id)))
        .peekable();
    let mut out = Vec::with_capacity(body.len() + 64);
    let put_new = |out: &mut Vec<u8>, (name, mode, id): (&str, u32, [u8; 20])| {
        out.extend_from_slice(format!("{mode:o} {name}\0").as_bytes());
        out.extend_from_slice(&id);
    };
    // The entries kept between two changes are copied as one run of the base's bytes: a tree of
    // 10,000 entries with one changed is two copies, not 50,000 small ones.
    let mut run = 0..0;
    for e in base {
        let span = e.span();
        let before_e = |&(name, mode, _): &(&str, u32, [u8; 20])| {
            git_order(name.as_bytes(), mode == MODE_TREE, e.name(), e.is_tree()).is_lt()
        };
        let replaced = changed.contains(e.name());
        if replaced || added.peek().is_some_and(before_e) {
            out.extend_from_slice(&body[run.clone()]);
            while let Some(new) = added.next_if(before_e) {
                put_new(&mut out, new);
            }
            run = span.start..span.start;
        }
        if replaced {
            run = span.end..span.end;
        } else {
            run.end = span.end;
        }
    }
    out.extend_from_slice(&body[run]);
    for new in added {
        put_new(&mut out, new);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long tree changed at every place (first, middle, last, several at once, an entry added
    /// between two kept ones): the kept entries are copied in runs, and the result is still the
    /// tree libgit2 builds.
    #[test]
    fn a_long_tree_spliced_anywhere_is_the_tree_git_builds() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let odb = repo.odb().unwrap();
        let blob = |s: &str| repo.blob(s.as_bytes()).unwrap();
        let mut base = repo.treebuilder(None).unwrap();
        for i in 0..40 {
            base.insert(format!("e{:02}", i * 2), blob(&i.to_string()), 0o100644)
                .unwrap();
        }
        let base = base.write().unwrap();
        let stored = odb.read(base).unwrap();
        let entries = raw_entries(stored.data()).unwrap();
        let id = |o: git2::Oid| <[u8; 20]>::try_from(o.as_bytes()).unwrap();
        let new = blob("new");
        let cases: &[&[(&str, bool)]] = &[
            &[("e00", true)],
            &[("e40", false)],
            &[("e78", true), ("e79", true)],
            &[("e01", true), ("e02", false), ("e41", true), ("e76", false)],
            &[("a", true), ("z", true)],
            &[("e10", false), ("e12", false), ("e14", false)],
        ];
        for case in cases {
            let mut changes: Vec<Change<'_>> = case
                .iter()
                .map(|&(name, put)| (name, put.then(|| (MODE_FILE, id(new)))))
                .collect();
            let spliced = splice_tree(stored.data(), &entries, &mut changes);
            let mut expected = repo.treebuilder(Some(&repo.find_tree(base).unwrap())).unwrap();
            for &(name, put) in case.iter() {
                if put {
                    expected.insert(name, new, 0o100644).unwrap();
                } else {
                    expected.remove(name).unwrap();
                }
            }
            let expected = odb.read(expected.write().unwrap()).unwrap();
            assert_eq!(spliced, expected.data(), "{case:?}");
        }
    }

    /// The spliced body is the one libgit2's own tree builder writes for the same entries: the
    /// order around `/` (`a`, `a-b`, `a.b`, `a/`), an entry changing kind under the same name,
    /// removals, and an executable or a symlink left untouched with its mode.
    #[test]
    fn a_spliced_tree_is_the_tree_git_builds() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let blob = |s: &str| repo.blob(s.as_bytes()).unwrap();
        let sub = {
            let mut b = repo.treebuilder(None).unwrap();
            b.insert("f", blob("f"), 0o100644).unwrap();
            b.write().unwrap()
        };
        let base_entries: [(&str, git2::Oid, i32); 7] = [
            ("a", blob("a"), 0o100644),
            ("a-b", blob("ab"), 0o100755),
            ("a.b", sub, 0o040000),
            ("b", sub, 0o040000),
            ("c", blob("c"), 0o120000),
            ("d", blob("d"), 0o100644),
            ("e", sub, 0o040000),
        ];
        let mut b = repo.treebuilder(None).unwrap();
        for (name, id, mode) in base_entries {
            b.insert(name, id, mode).unwrap();
        }
        let base = repo.find_object(b.write().unwrap(), None).unwrap();
        let odb = repo.odb().unwrap();
        let stored = odb.read(base.id()).unwrap();
        let entries = raw_entries(stored.data()).unwrap();
        assert_eq!(entries.len(), 7);
        assert_eq!(find_dir(&entries, "b").map(|e| e.name()), Some(&b"b"[..]));
        assert_eq!(find_dir(&entries, "a"), None, "`a` is a file");
        let id = |o: git2::Oid| <[u8; 20]>::try_from(o.as_bytes()).unwrap();
        let mut changes = vec![
            ("a", Some((MODE_TREE, id(sub)))),       // a file becomes a directory
            ("b", Some((MODE_FILE, id(blob("b"))))), // a directory becomes a file
            ("d", None),
            ("a/", None), // no such entry: nothing happens
            ("z", Some((MODE_FILE, id(blob("z"))))),
            ("0", Some((MODE_TREE, id(sub)))),
        ];
        let spliced = splice_tree(stored.data(), &entries, &mut changes);

        let mut expected = repo.treebuilder(Some(&repo.find_tree(base.id()).unwrap())).unwrap();
        expected.insert("a", sub, 0o040000).unwrap();
        expected.insert("b", blob("b"), 0o100644).unwrap();
        expected.remove("d").unwrap();
        expected.insert("z", blob("z"), 0o100644).unwrap();
        expected.insert("0", sub, 0o040000).unwrap();
        let expected = odb.read(expected.write().unwrap()).unwrap();
        assert_eq!(spliced, expected.data());
    }

    #[test]
    fn a_body_that_is_not_a_tree_is_refused() {
        assert_eq!(raw_entries(b"").map(|e| e.len()), Some(0));
        assert!(raw_entries(b"100644 name-without-id").is_none());
        assert!(raw_entries(b"100644 a\0short").is_none());
        let mut odd_mode = vec![b'1'; 256];
        odd_mode.extend_from_slice(b" a\0");
        odd_mode.extend_from_slice(&[7; 20]);
        assert!(raw_entries(&odd_mode).is_none(), "a mode of 256 bytes");
    }

    #[test]
    fn an_entry_gives_back_each_of_its_parts() {
        let mut body = b"100644 a.yaml\0".to_vec();
        body.extend_from_slice(&[1; 20]);
        body.extend_from_slice(b"40000 dir\0");
        body.extend_from_slice(&[2; 20]);
        let entries = raw_entries(&body).unwrap();
        let parts: Vec<_> = entries
            .iter()
            .map(|e| (e.mode(), e.name(), e.id_bytes(), e.span()))
            .collect();
        assert_eq!(
            parts,
            [
                (&b"100644"[..], &b"a.yaml"[..], [1; 20], 0..34),
                (&b"40000"[..], &b"dir"[..], [2; 20], 34..64),
            ]
        );
    }

    /// The pack and the index written here are ones git takes: `git verify-pack` indexes the pack
    /// again and checks the index against it (every id and CRC-32; a changed CRC-32 is refused,
    /// below); then git and libgit2 read every object back, and `git fsck` finds nothing.
    #[test]
    fn git_verifies_the_pack_and_its_index_and_reads_every_object_back() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let big = "x".repeat(70_000);
        // Bytes deflate cannot shrink: the stream outgrows the room first reserved for it.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        // Enough blobs that every first byte of an id, hence every fan-out slot, is used.
        let many: Vec<String> = (0..2_000).map(|i| format!("kind: ConfigMap\nname: c{i}\n")).collect();
        let mut contents: Vec<&[u8]> = vec![b"", b"kind: Namespace\n", big.as_bytes(), &noise, b"kind: Namespace\n"];
        contents.extend(many.iter().map(String::as_bytes));
        let packs = dir.path().join("objects/pack");
        let mut pack = BlobPack::new(&packs).unwrap();
        let ids: Vec<BlobId> = contents.iter().map(|c| pack.add(c).unwrap()).collect();
        assert_eq!(ids[1], ids[4], "the same content is one blob");
        let mut tree = Vec::new();
        for (name, id) in [("big.yaml", ids[2]), ("namespace.yaml", ids[1]), ("noise", ids[3])] {
            tree.extend_from_slice(format!("100644 {name}\0").as_bytes());
            tree.extend_from_slice(&id.0);
        }
        let tree_id = pack.add_tree(&tree).unwrap();
        let commit = format!(
            "tree {}\nauthor a <a@x> 0 +0000\ncommitter a <a@x> 0 +0000\n\nm\n",
            hex::encode(tree_id)
        );
        let commit_id = pack.add_commit(commit.as_bytes()).unwrap();
        let idx = pack.finish(&packs).unwrap();
        let names: Vec<String> = std::fs::read_dir(&packs)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "the pack and its index, no temporary file: {names:?}");
        let out = std::process::Command::new("git")
            .args(["verify-pack", "-v"])
            .arg(&idx)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(
            listed.contains(&format!("{} commit", hex::encode(commit_id))),
            "{listed}"
        );
        assert!(listed.contains("non delta: 2006 objects"), "{listed}");
        // The check has teeth: the same index with one CRC-32 changed (and its checksum made
        // right again) is refused.
        let copy = tempfile::tempdir().unwrap();
        let file = idx.file_name().unwrap();
        std::fs::copy(
            idx.with_extension("pack"),
            copy.path().join(file).with_extension("pack"),
        )
        .unwrap();
        let mut bad = std::fs::read(&idx).unwrap();
        bad[8 + 1024 + 2006 * 20] ^= 1;
        let end = bad.len() - 20;
        let sum: [u8; 20] = Sha1::digest(&bad[..end]).into();
        bad[end..].copy_from_slice(&sum);
        std::fs::write(copy.path().join(file), bad).unwrap();
        let out = std::process::Command::new("git")
            .args(["verify-pack"])
            .arg(copy.path().join(file))
            .output()
            .unwrap();
        assert!(!out.status.success(), "a wrong CRC-32 was not noticed");
        let mode = std::fs::metadata(&idx).unwrap().permissions();
        assert!(mode.readonly());
        let odb = repo.odb().unwrap();
        odb.refresh().unwrap();
        for (content, id) in contents.iter().zip(&ids) {
            let oid = git2::Oid::from_bytes(&id.0).unwrap();
            assert_eq!(repo.find_blob(oid).unwrap().content(), *content);
        }
        let commit = repo.find_commit(git2::Oid::from_bytes(&commit_id).unwrap()).unwrap();
        assert_eq!(commit.tree().unwrap().len(), 3);
        let fsck = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(dir.path())
            .args(["fsck", "--full", "--strict"])
            .output()
            .unwrap();
        assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stderr));
    }

    /// Blobs added together, hashed and deflated on every core in batches, make the very pack
    /// that adding them one by one makes: the same entries in the same order, each content once
    /// (also when its first copy came in an earlier batch, or by `add` before).
    #[test]
    fn blobs_added_together_make_the_pack_added_one_by_one() {
        let files: Vec<String> = (0..3_000)
            .map(|i| i % 2_500)
            .map(|k| format!("kind: ConfigMap\nname: c{k}\ndata: {}\n", "v".repeat(k % 2_000)))
            .collect();
        let contents: Vec<&[u8]> = files.iter().map(String::as_bytes).collect();
        let total: usize = contents.iter().map(|c| c.len()).sum();
        assert!(total > 2 * BATCH, "{total} bytes make three batches or more");
        let write = |together: bool| {
            let dir = tempfile::tempdir().unwrap();
            git2::Repository::init_bare(dir.path()).unwrap();
            let packs = dir.path().join("objects/pack");
            let mut pack = BlobPack::new(&packs).unwrap();
            let first = pack.add(contents[7]).unwrap();
            let ids = if together {
                pack.add_all(&contents).unwrap()
            } else {
                contents.iter().map(|c| pack.add(c).unwrap()).collect()
            };
            assert_eq!(ids[7], first);
            let idx = pack.finish(&packs).unwrap();
            let verified = std::process::Command::new("git")
                .args(["verify-pack", "-v"])
                .arg(&idx)
                .output()
                .unwrap();
            assert!(
                verified.status.success(),
                "{}",
                String::from_utf8_lossy(&verified.stderr)
            );
            let listed = String::from_utf8_lossy(&verified.stdout).into_owned();
            assert!(listed.contains("non delta: 2500 objects"), "{listed}");
            (ids, std::fs::read(idx.with_extension("pack")).unwrap(), dir)
        };
        let (one_by_one, pack, _dir) = write(false);
        let (together, same, _other) = write(true);
        assert_eq!(together, one_by_one);
        assert_eq!(together[0], together[2_500], "the same content is one blob");
        assert!(same == pack, "the packs differ");
    }

    /// Offsets from 2 GiB on are listed in the table of 8-byte offsets, in the order of the ids
    /// they belong to (no test pack is that large: the layout is checked against gitformat-pack).
    #[test]
    fn an_offset_past_two_gibibytes_goes_to_the_table_of_large_offsets() {
        let entry = |first: u8, offset: u64| IndexEntry {
            id: [first; 20],
            crc: u32::from(first),
            offset,
        };
        let entries = [
            entry(1, 12),
            entry(7, 5 << 30),
            entry(9, (1 << 31) - 1),
            entry(200, 3 << 31),
        ];
        let bytes = index_bytes(&entries, &[0xab; 20]);
        let n = entries.len();
        let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!(&bytes[..8], b"\xfftOc\0\0\0\x02");
        let fanout = |byte: usize| word(8 + byte * 4);
        assert_eq!(
            [fanout(0), fanout(1), fanout(6), fanout(7), fanout(199), fanout(255)],
            [0, 1, 1, 2, 3, 4]
        );
        let crcs = 8 + 1024 + n * 20;
        assert_eq!(word(crcs + 4), 7);
        let offsets = crcs + n * 4;
        let small: Vec<u32> = (0..n).map(|i| word(offsets + i * 4)).collect();
        assert_eq!(small, [12, 1 << 31, (1 << 31) - 1, (1 << 31) | 1]);
        let large = offsets + n * 4;
        let long = |i: usize| u64::from_be_bytes(bytes[large + i * 8..large + i * 8 + 8].try_into().unwrap());
        assert_eq!([long(0), long(1)], [5 << 30, 3 << 31]);
        assert_eq!(&bytes[large + 16..large + 36], &[0xab; 20]);
        let sum: [u8; 20] = Sha1::digest(&bytes[..large + 36]).into();
        assert_eq!(bytes[large + 36..], sum);
    }

    #[test]
    fn a_stored_zlib_stream_inflates_to_its_parts_across_block_boundaries() {
        use std::io::Read;
        assert_eq!(
            adler32(&[b"Wikipedia"]),
            0x11e6_0398,
            "RFC 1950's checksum of a known text"
        );
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for (len, cut) in [
            (0, 0),
            (1, 0),
            (1, 1),
            (65_535, 10),
            (65_536, 65_535),
            (131_071, 65_536),
            (200_000, 3),
        ] {
            let (head, tail) = data[..len].split_at(cut);
            let mut out = Vec::new();
            stored(&[head, tail], &mut out);
            let mut back = Vec::new();
            flate2::read::ZlibDecoder::new(&out[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back, &data[..len], "{len} bytes cut at {cut}");
            assert_eq!(adler32(&[head, tail]), adler32(&[&data[..len]]));
            // Five bytes of block header per 65,535 bytes: stored, not deflated.
            assert_eq!(out.len(), 2 + len + len.div_ceil(65_535).max(1) * 5 + 4, "{len}");
        }
    }

    #[test]
    fn a_loose_object_is_the_one_git_writes_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let objects = dir.path().join("objects");
        let body = "kind: Namespace\n".repeat(5_000);
        let id = write_loose(&objects, "blob", body.as_bytes()).unwrap();
        // git's own hash of the same bytes, and git's own reading of the file.
        let git = |args: &[&str], input: Option<&[u8]>| {
            let mut child = std::process::Command::new("git")
                .arg("--git-dir")
                .arg(dir.path())
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            if let Some(input) = input {
                child.stdin.take().unwrap().write_all(input).unwrap();
            } else {
                drop(child.stdin.take());
            }
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "git {args:?}");
            out.stdout
        };
        let hashed = git(&["hash-object", "--stdin"], Some(body.as_bytes()));
        assert_eq!(String::from_utf8(hashed).unwrap().trim(), hex::encode(id));
        assert_eq!(git(&["cat-file", "blob", &hex::encode(id)], None), body.as_bytes());
        let oid = git2::Oid::from_bytes(&id).unwrap();
        assert_eq!(repo.find_blob(oid).unwrap().content(), body.as_bytes());
        // Read-only, like git's; nothing temporary left; a second write leaves the file alone.
        let hex = hex::encode(id);
        let path = objects.join(&hex[..2]).join(&hex[2..]);
        let before = std::fs::metadata(&path).unwrap();
        assert!(before.permissions().readonly());
        assert_eq!(write_loose(&objects, "blob", body.as_bytes()).unwrap(), id);
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            before.modified().unwrap()
        );
        let names: Vec<_> = std::fs::read_dir(objects.join(&hex[..2]))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(&hex[2..])]);
        let tree = write_loose(&objects, "tree", &[]).unwrap();
        assert_eq!(
            hex::encode(tree),
            "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
            "git's empty tree"
        );
        // A tree large enough to be stored uncompressed: git hashes, reads and checks it the same.
        let mut big = repo.treebuilder(None).unwrap();
        let blob = repo.blob(b"x").unwrap();
        for i in 0..1_000 {
            big.insert(format!("shop-pr-{i}.yaml"), blob, 0o100644).unwrap();
        }
        let big = repo.odb().unwrap().read(big.write().unwrap()).unwrap().data().to_vec();
        assert!(big.len() >= STORED_TREE);
        let fresh = tempfile::tempdir().unwrap();
        let fresh_repo = git2::Repository::init_bare(fresh.path()).unwrap();
        let id = write_loose(&fresh.path().join("objects"), "tree", &big).unwrap();
        let oid = git2::Oid::from_bytes(&id).unwrap();
        assert_eq!(fresh_repo.odb().unwrap().read(oid).unwrap().data(), &big[..]);
        let hex = hex::encode(id);
        let stored = std::fs::metadata(fresh.path().join("objects").join(&hex[..2]).join(&hex[2..])).unwrap();
        assert!(stored.len() as usize > big.len(), "stored, not deflated");
        let status = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(fresh.path())
            .args(["fsck", "--strict"])
            .status()
            .unwrap();
        assert!(status.success());
        // git fsck exits non-zero on an object it cannot read or whose hash is wrong.
        git(&["fsck", "--strict"], None);
    }

    #[test]
    fn a_stored_tree_is_read_back_whole_and_anything_else_is_left_to_git() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let objects = dir.path().join("objects");
        let mut big = repo.treebuilder(None).unwrap();
        let blob = repo.blob(b"x").unwrap();
        for i in 0..3_000 {
            big.insert(format!("shop-pr-{i}.yaml"), blob, 0o100644).unwrap();
        }
        // libgit2 writes it deflated: not prenv's stored form, so git is asked.
        let by_git = big.write().unwrap();
        let body = repo.odb().unwrap().read(by_git).unwrap().data().to_vec();
        let git_id: [u8; 20] = by_git.as_bytes().try_into().unwrap();
        assert_eq!(read_stored_tree(&objects, &git_id, 0), None);
        // Written by prenv (spanning three stored blocks), it is read back byte for byte.
        let fresh = tempfile::tempdir().unwrap();
        let objects = fresh.path().join("objects");
        let id = LooseWriter::new(&objects).write("tree", &body).unwrap();
        assert_eq!(id, git_id);
        assert!(body.len() > 2 * 65_535);
        assert_eq!(read_stored_tree(&objects, &id, 0).as_deref(), Some(&body[..]));
        assert_eq!(
            read_stored_tree(&objects, &id, body.len() * 2),
            None,
            "smaller than asked"
        );
        assert_eq!(read_stored_tree(&objects, &[7; 20], 0), None, "not there");
        // Damaged (a byte changed, cut short, something appended): left to git, which says so.
        let hex = hex::encode(id);
        let path = objects.join(&hex[..2]).join(&hex[2..]);
        let good = std::fs::read(&path).unwrap();
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 1;
        // A header claiming more bytes than the file holds (here 10^15) is refused before any
        // allocation.
        let mut huge = good.clone();
        let at = huge.windows(5).position(|w| w == b"tree ").unwrap() + 5;
        huge.splice(at..at, b"999999999".iter().copied());
        for bad in [
            flipped,
            good[..good.len() - 1].to_vec(),
            [&good[..], b"x"].concat(),
            huge,
        ] {
            let mut permissions = std::fs::metadata(&path).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false, reason = "a test damaging its own file")]
            permissions.set_readonly(false);
            std::fs::set_permissions(&path, permissions).unwrap();
            std::fs::write(&path, &bad).unwrap();
            assert_eq!(read_stored_tree(&objects, &id, 0), None);
        }
    }
}
