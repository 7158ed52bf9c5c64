//! A git packfile of a new commit — its blobs, the trees on their paths and the commit — written in
//! one pass without delta compression: a sync that adds thousands of files hands git one pack to
//! index instead of thousands of object writes (libgit2 looks every new object up before writing
//! it, and rescans the pack directory on each miss) or a pack that libgit2's packbuilder
//! delta-compresses object by object (seconds for the two 10,000-entry trees of a large
//! repository). The format is git's
//! (gitformat-pack: "PACK", version 2, the object count, each object as a type-and-size header and
//! its zlib-deflated bytes, then the SHA-1 of everything before it); git and libgit2 index it like
//! any pack they receive, and a later `git gc` delta-compresses it if anyone wants it smaller.

use std::collections::HashSet;
use std::io::Write;

use flate2::Compression;
use flate2::write::ZlibEncoder;
use sha1::{Digest, Sha1};

use crate::model::layout::BlobId;

/// git's object type numbers in a pack entry header.
const OBJ_COMMIT: u8 = 1;
const OBJ_TREE: u8 = 2;
const OBJ_BLOB: u8 = 3;

/// The pack being built: header, then entries, each blob once.
pub struct BlobPack {
    bytes: Vec<u8>,
    count: u32,
    seen: HashSet<BlobId>,
}

impl Default for BlobPack {
    fn default() -> BlobPack {
        BlobPack::new()
    }
}

impl BlobPack {
    pub fn new() -> BlobPack {
        let mut bytes = Vec::with_capacity(1 << 20);
        bytes.extend_from_slice(b"PACK");
        bytes.extend_from_slice(&2u32.to_be_bytes());
        bytes.extend_from_slice(&0u32.to_be_bytes()); // the count, set by `finish`
        BlobPack {
            bytes,
            count: 0,
            seen: HashSet::new(),
        }
    }

    /// Adds a blob of `content` (once per distinct content) and returns its id.
    pub fn add(&mut self, content: &[u8]) -> BlobId {
        let id = BlobId::of(content);
        if self.seen.insert(id) {
            self.entry(OBJ_BLOB, content);
        }
        id
    }

    /// Adds a tree object (its body: the entries in git's order) and returns its id.
    pub fn add_tree(&mut self, body: &[u8]) -> [u8; 20] {
        let id = object_id("tree", body);
        if self.seen.insert(BlobId(id)) {
            self.entry(OBJ_TREE, body);
        }
        id
    }

    /// Adds a commit object and returns its id.
    pub fn add_commit(&mut self, body: &[u8]) -> [u8; 20] {
        let id = object_id("commit", body);
        if self.seen.insert(BlobId(id)) {
            self.entry(OBJ_COMMIT, body);
        }
        id
    }

    fn entry(&mut self, kind: u8, content: &[u8]) {
        // Type and size: the first byte holds the type and the size's low 4 bits, each next byte
        // 7 more bits, the high bit saying another byte follows.
        let mut size = content.len();
        let mut byte = (kind << 4) | (size & 0x0f) as u8;
        size >>= 4;
        while size > 0 {
            self.bytes.push(byte | 0x80);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        self.bytes.push(byte);
        let mut zlib = ZlibEncoder::new(&mut self.bytes, Compression::fast());
        // Writing into a Vec cannot fail.
        let _ = zlib.write_all(content);
        let _ = zlib.finish();
        self.count += 1;
    }

    /// The finished pack: the count filled in and the trailing checksum appended.
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes[8..12].copy_from_slice(&self.count.to_be_bytes());
        let sum = Sha1::digest(&self.bytes);
        self.bytes.extend_from_slice(&sum);
        self.bytes
    }
}

/// git's id of an object: SHA-1 of `<kind> <len>\0` and the body.
fn object_id(kind: &str, body: &[u8]) -> [u8; 20] {
    let mut hasher = Sha1::new();
    hasher.update(format!("{kind} {}\0", body.len()).as_bytes());
    hasher.update(body);
    hasher.finalize().into()
}

/// One entry of a tree: mode (git's octal, e.g. `100644`, `40000`), name, id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    pub mode: u32,
    pub name: String,
    pub id: [u8; 20],
}

/// The mode of a directory entry.
pub const MODE_TREE: u32 = 0o40000;
/// The mode of a plain file.
pub const MODE_FILE: u32 = 0o100644;

/// A tree's body: its entries sorted as git sorts them (by name, a directory's name compared as
/// if it ended in `/`; gitformat-index, `base_name_compare`), each `<mode> <name>\0<id>`.
pub fn tree_body(entries: &mut [TreeEntry]) -> Vec<u8> {
    let key = |e: &TreeEntry| {
        let mut k = e.name.as_bytes().to_vec();
        if e.mode == MODE_TREE {
            k.push(b'/');
        }
        k
    };
    entries.sort_by_cached_key(key);
    let mut body = Vec::with_capacity(entries.len() * 48);
    for e in entries.iter() {
        body.extend_from_slice(format!("{:o} ", e.mode).as_bytes());
        body.extend_from_slice(e.name.as_bytes());
        body.push(0);
        body.extend_from_slice(&e.id);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_indexes_the_pack_and_reads_every_blob_back() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(dir.path()).unwrap();
        let big = "x".repeat(70_000);
        let contents: [&[u8]; 4] = [b"", b"kind: Namespace\n", big.as_bytes(), b"kind: Namespace\n"];
        let mut pack = BlobPack::new();
        let ids: Vec<BlobId> = contents.iter().map(|c| pack.add(c)).collect();
        assert_eq!(ids[1], ids[3], "the same content is one blob");
        let odb = repo.odb().unwrap();
        let mut writer = odb.packwriter().unwrap();
        writer.write_all(&pack.finish()).unwrap();
        writer.commit().unwrap();
        for (content, id) in contents.iter().zip(&ids) {
            let oid = git2::Oid::from_bytes(&id.0).unwrap();
            assert_eq!(repo.find_blob(oid).unwrap().content(), *content);
        }
    }
}
