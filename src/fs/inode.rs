//! The table of FUSE node ids handed to the kernel.
//!
//! fuser uses the inode number of the attributes it is given as the node id, so a node id is
//! the inode number that `stat` shows: the backing file's own number (see `attr::visible_ino`).
//! That keeps ids stable while mounted, equal in readdir and stat, and shared by every name of
//! a hard-linked file. A node keeps the names it is known under (parent node and name); its
//! path in both trees is derived from the first one.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

pub const ROOT: u64 = 1;

#[derive(Debug)]
struct Node {
    /// Names of this node as (parent id, name), most recently used first; empty once every
    /// known name was unlinked (the file may still be open).
    aliases: Vec<(u64, OsString)>,
    /// Lookups the kernel holds on this node; it is dropped when `forget` brings this to 0.
    nlookup: u64,
}

#[derive(Debug)]
pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    /// The node currently known under each (parent id, name).
    children: HashMap<(u64, OsString), u64>,
}

impl Default for InodeTable {
    fn default() -> Self {
        InodeTable::new()
    }
}

impl InodeTable {
    pub fn new() -> InodeTable {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                aliases: Vec::new(),
                nlookup: 1,
            },
        );
        InodeTable {
            nodes,
            children: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Returns the path of a node relative to the backing roots, or `None` for an unknown node
    /// or one without a name left.
    pub fn path(&self, id: u64) -> Option<PathBuf> {
        let mut names: Vec<&OsStr> = Vec::new();
        let mut current = id;
        while current != ROOT {
            let node = self.nodes.get(&current)?;
            let (parent, name) = node.aliases.first()?;
            names.push(name);
            current = *parent;
            if names.len() > 4096 {
                return None;
            }
        }
        let mut path = PathBuf::new();
        for name in names.iter().rev() {
            path.push(name);
        }
        Some(path)
    }

    /// Records a lookup of `name` in `parent` that found node `id`, adding one kernel
    /// reference.
    pub fn lookup(&mut self, parent: u64, name: &OsStr, id: u64) {
        let alias = (parent, name.to_os_string());
        self.nodes.entry(id).or_insert_with(|| Node {
            aliases: Vec::new(),
            nlookup: 0,
        });

        if let Some(previous) = self.children.insert(alias.clone(), id) {
            if previous != id {
                self.drop_alias(previous, &alias);
            }
        }
        let node = self.nodes.get_mut(&id).expect("node just found or created");
        node.aliases.retain(|a| a != &alias);
        node.aliases.insert(0, alias);
        node.nlookup += 1;
    }

    /// Records that `name` in `parent` is node `id` without adding a kernel reference: for
    /// nodes the kernel kept from a previous daemon.
    pub fn learn(&mut self, parent: u64, name: &OsStr, id: u64) {
        let alias = (parent, name.to_os_string());
        if self.children.contains_key(&alias) {
            return;
        }
        self.children.insert(alias.clone(), id);
        let node = self.nodes.entry(id).or_insert_with(|| Node {
            aliases: Vec::new(),
            nlookup: 0,
        });
        node.aliases.push(alias);
    }

    /// Releases `count` kernel references; the node is dropped when none remain.
    pub fn forget(&mut self, id: u64, count: u64) {
        if id == ROOT {
            return;
        }
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.nlookup = node.nlookup.saturating_sub(count);
        if node.nlookup > 0 {
            return;
        }

        let node = self.nodes.remove(&id).expect("node exists");
        for alias in node.aliases {
            if self.children.get(&alias) == Some(&id) {
                self.children.remove(&alias);
            }
        }
    }

    fn drop_alias(&mut self, id: u64, alias: &(u64, OsString)) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.aliases.retain(|a| a != alias);
    }

    /// Forgets the name `name` in `parent` after an unlink or rmdir.
    pub fn remove_name(&mut self, parent: u64, name: &OsStr) {
        let alias = (parent, name.to_os_string());
        if let Some(id) = self.children.remove(&alias) {
            self.drop_alias(id, &alias);
        }
    }

    /// Moves a name after a rename; a node replaced at the destination loses that name.
    pub fn rename(&mut self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr) {
        let from = (parent, name.to_os_string());
        let to = (new_parent, new_name.to_os_string());
        let Some(id) = self.children.remove(&from) else {
            self.remove_name(new_parent, new_name);
            return;
        };
        if let Some(replaced) = self.children.remove(&to) {
            self.drop_alias(replaced, &to);
        }

        if let Some(node) = self.nodes.get_mut(&id) {
            for alias in node.aliases.iter_mut() {
                if *alias == from {
                    *alias = to.clone();
                }
            }
        }
        self.children.insert(to, id);
    }

    /// Swaps two names after RENAME_EXCHANGE.
    pub fn exchange(&mut self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr) {
        let a = (parent, name.to_os_string());
        let b = (new_parent, new_name.to_os_string());
        let id_a = self.children.remove(&a);
        let id_b = self.children.remove(&b);

        for (id, from, to) in [(id_a, &a, &b), (id_b, &b, &a)] {
            let Some(id) = id else { continue };
            if let Some(node) = self.nodes.get_mut(&id) {
                for alias in node.aliases.iter_mut() {
                    if alias == from {
                        *alias = to.clone();
                    }
                }
            }
            self.children.insert(to.clone(), id);
        }
    }

    /// Encodes every node with its names and kernel references, for the daemon that takes the
    /// connection over. Per node: id, references, name count; per name: parent id, name
    /// length (u16) and bytes; all little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.nodes.len() * 48);
        for (id, node) in &self.nodes {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&node.nlookup.to_le_bytes());
            out.extend_from_slice(&(node.aliases.len() as u32).to_le_bytes());
            for (parent, name) in &node.aliases {
                let name = name.as_bytes();
                out.extend_from_slice(&parent.to_le_bytes());
                out.extend_from_slice(&(name.len() as u16).to_le_bytes());
                out.extend_from_slice(name);
            }
        }
        out
    }

    /// Rebuilds a table from `encode`'s output; `None` when the bytes are malformed.
    pub fn decode(mut bytes: &[u8]) -> Option<InodeTable> {
        fn take<'a>(bytes: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
            if bytes.len() < len {
                return None;
            }
            let (head, rest) = bytes.split_at(len);
            *bytes = rest;
            Some(head)
        }
        let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));

        let mut table = InodeTable::new();
        while !bytes.is_empty() {
            let id = u64_of(take(&mut bytes, 8)?);
            let nlookup = u64_of(take(&mut bytes, 8)?);
            let count = u32::from_le_bytes(take(&mut bytes, 4)?.try_into().ok()?);
            let mut aliases = Vec::with_capacity(count.min(1024) as usize);
            for _ in 0..count {
                let parent = u64_of(take(&mut bytes, 8)?);
                let len = u16::from_le_bytes(take(&mut bytes, 2)?.try_into().ok()?);
                let name = OsStr::from_bytes(take(&mut bytes, len as usize)?).to_os_string();
                aliases.push((parent, name));
            }
            for alias in &aliases {
                table.children.insert(alias.clone(), id);
            }
            table.nodes.insert(id, Node { aliases, nlookup });
        }
        Some(table)
    }

    /// Returns the node known under `name` in `parent`, if any.
    pub fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.children.get(&(parent, name.to_os_string())).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_table_decodes_to_the_same_paths() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, OsStr::new("dir"), 10);
        table.lookup(10, OsStr::new("file"), 11);
        table.lookup(ROOT, OsStr::new("link"), 11);
        table.lookup(10, OsStr::new("file"), 11);

        let decoded = InodeTable::decode(&table.encode()).expect("decodes");
        assert_eq!(decoded.len(), table.len());
        assert_eq!(decoded.path(11), table.path(11));
        assert_eq!(decoded.path(10), Some(PathBuf::from("dir")));
        assert_eq!(decoded.child(ROOT, OsStr::new("link")), Some(11));
        assert_eq!(decoded.nodes[&11].nlookup, 3);
        assert!(InodeTable::decode(&table.encode()[..7]).is_none());
    }

    #[test]
    fn hard_links_share_one_node() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, OsStr::new("a"), 10);
        table.lookup(ROOT, OsStr::new("b"), 10);
        table.remove_name(ROOT, OsStr::new("b"));
        assert_eq!(table.path(10), Some(PathBuf::from("a")));
    }

    #[test]
    fn rename_moves_descendant_paths() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, OsStr::new("d"), 2);
        table.lookup(2, OsStr::new("f"), 3);
        table.rename(ROOT, OsStr::new("d"), ROOT, OsStr::new("e"));
        assert_eq!(table.path(3), Some(PathBuf::from("e/f")));
    }

    #[test]
    fn unlinked_node_keeps_no_path() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, OsStr::new("a"), 10);
        table.remove_name(ROOT, OsStr::new("a"));
        assert_eq!(table.path(10), None);
    }

    #[test]
    fn forget_drops_node() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, OsStr::new("a"), 10);
        table.lookup(ROOT, OsStr::new("a"), 10);
        table.forget(10, 1);
        assert!(table.path(10).is_some());
        table.forget(10, 1);
        assert!(table.path(10).is_none());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn exchange_swaps_names() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, OsStr::new("a"), 10);
        table.lookup(ROOT, OsStr::new("b"), 11);
        table.exchange(ROOT, OsStr::new("a"), ROOT, OsStr::new("b"));
        assert_eq!(table.path(10), Some(PathBuf::from("b")));
        assert_eq!(table.path(11), Some(PathBuf::from("a")));
    }

    fn name(text: &str) -> &OsStr {
        OsStr::new(text)
    }

    /// Returns the bytes of one node record as `encode` writes it.
    fn record(id: u64, nlookup: u64, aliases: &[(u64, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&nlookup.to_le_bytes());
        out.extend_from_slice(&(aliases.len() as u32).to_le_bytes());
        for (parent, name) in aliases {
            out.extend_from_slice(&parent.to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        out
    }

    /// Asserts that `encoded` is exactly the `expected` records, in any order, because `encode`
    /// writes the nodes in no fixed order. Records start with distinct ids, so at most one
    /// expected record matches at each offset.
    fn assert_records(encoded: &[u8], expected: &[Vec<u8>]) {
        let mut left: Vec<&Vec<u8>> = expected.iter().collect();
        let mut rest = encoded;
        while !rest.is_empty() {
            let position = left
                .iter()
                .position(|record| rest.starts_with(record))
                .unwrap_or_else(|| {
                    panic!("unexpected record at {:?}", &rest[..rest.len().min(20)])
                });
            rest = &rest[left[position].len()..];
            left.remove(position);
        }
        assert!(
            left.is_empty(),
            "records missing from the encoding: {left:?}"
        );
    }

    #[test]
    fn hard_link_path_follows_latest_lookup() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("d"), 2);
        table.lookup(ROOT, name("a"), 10);
        table.lookup(2, name("b"), 10);
        table.lookup(ROOT, name("c"), 10);
        assert_eq!(table.path(10), Some(PathBuf::from("c")));

        table.lookup(2, name("b"), 10);
        assert_eq!(table.path(10), Some(PathBuf::from("d/b")));
        for (parent, alias) in [(ROOT, "a"), (2, "b"), (ROOT, "c")] {
            assert_eq!(table.child(parent, name(alias)), Some(10), "{alias}");
        }
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(2, 1, &[(ROOT, "d")]),
                record(10, 4, &[(2, "b"), (ROOT, "c"), (ROOT, "a")]),
            ],
        );
    }

    #[test]
    fn removing_first_hard_link_uses_next() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 10);
        table.lookup(ROOT, name("c"), 10);

        table.remove_name(ROOT, name("c"));
        assert_eq!(table.path(10), Some(PathBuf::from("b")));
        assert_eq!(table.child(ROOT, name("c")), None);

        table.remove_name(ROOT, name("b"));
        assert_eq!(table.path(10), Some(PathBuf::from("a")));

        table.remove_name(ROOT, name("a"));
        assert_eq!(table.path(10), None);
        assert_eq!(
            table.len(),
            2,
            "an unlinked node stays until the kernel forgets it"
        );
        assert_records(&table.encode(), &[record(ROOT, 1, &[]), record(10, 3, &[])]);

        table.lookup(ROOT, name("e"), 10);
        assert_eq!(table.path(10), Some(PathBuf::from("e")));
    }

    #[test]
    fn removing_middle_hard_link_keeps_order() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 10);
        table.lookup(ROOT, name("c"), 10);
        table.remove_name(ROOT, name("b"));
        table.remove_name(ROOT, name("missing"));
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(10, 3, &[(ROOT, "c"), (ROOT, "a")]),
            ],
        );
    }

    #[test]
    fn forget_drops_every_hard_link() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 10);
        table.learn(ROOT, name("c"), 10);
        table.lookup(ROOT, name("other"), 11);

        table.forget(10, 1);
        assert_eq!(table.path(10), Some(PathBuf::from("b")));
        table.forget(10, 5);
        assert_eq!(table.path(10), None);
        for alias in ["a", "b", "c"] {
            assert_eq!(table.child(ROOT, name(alias)), None, "{alias}");
        }
        assert_eq!(table.child(ROOT, name("other")), Some(11));
        assert_eq!(table.len(), 2);

        table.forget(ROOT, 1);
        table.forget(99, 1);
        assert_eq!(table.len(), 2);
        assert_eq!(table.path(ROOT), Some(PathBuf::new()));
    }

    #[test]
    fn lookup_takes_name_from_other_node() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 10);
        table.lookup(ROOT, name("b"), 11);
        assert_eq!(table.child(ROOT, name("b")), Some(11));
        assert_eq!(table.path(10), Some(PathBuf::from("a")));

        table.lookup(ROOT, name("a"), 11);
        assert_eq!(table.path(10), None);
        assert_eq!(table.len(), 3, "a node that lost its names stays");
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(10, 2, &[]),
                record(11, 2, &[(ROOT, "a"), (ROOT, "b")]),
            ],
        );
    }

    #[test]
    fn learn_appends_and_keeps_known_names() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.learn(ROOT, name("b"), 10);
        table.learn(ROOT, name("a"), 11);
        table.learn(ROOT, name("c"), 12);
        assert_eq!(table.path(10), Some(PathBuf::from("a")));
        assert_eq!(table.child(ROOT, name("a")), Some(10));
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(10, 1, &[(ROOT, "a"), (ROOT, "b")]),
                record(12, 0, &[(ROOT, "c")]),
            ],
        );

        table.forget(12, 0);
        assert_eq!(table.child(ROOT, name("c")), None);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn rename_of_hard_link_keeps_position() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("d"), 2);
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 10);
        table.lookup(ROOT, name("c"), 10);

        table.rename(ROOT, name("b"), 2, name("x"));
        assert_eq!(table.path(10), Some(PathBuf::from("c")));
        assert_eq!(table.child(ROOT, name("b")), None);
        assert_eq!(table.child(2, name("x")), Some(10));

        table.rename(ROOT, name("c"), 2, name("y"));
        assert_eq!(table.path(10), Some(PathBuf::from("d/y")));
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(2, 1, &[(ROOT, "d")]),
                record(10, 3, &[(2, "y"), (2, "x"), (ROOT, "a")]),
            ],
        );
    }

    #[test]
    fn rename_over_other_node_drops_its_name() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 11);
        table.lookup(ROOT, name("c"), 11);

        table.rename(ROOT, name("a"), ROOT, name("c"));
        assert_eq!(table.child(ROOT, name("c")), Some(10));
        assert_eq!(table.child(ROOT, name("a")), None);
        assert_eq!(table.path(11), Some(PathBuf::from("b")));
        assert_eq!(table.path(10), Some(PathBuf::from("c")));
    }

    #[test]
    fn rename_onto_own_hard_link_merges() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 10);
        table.lookup(ROOT, name("c"), 10);

        table.rename(ROOT, name("a"), ROOT, name("c"));
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(10, 3, &[(ROOT, "b"), (ROOT, "c")]),
            ],
        );

        table.rename(ROOT, name("b"), ROOT, name("b"));
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(10, 3, &[(ROOT, "b"), (ROOT, "c")]),
            ],
        );
    }

    #[test]
    fn rename_of_unknown_name_drops_destination() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.rename(ROOT, name("unknown"), ROOT, name("a"));
        assert_eq!(table.child(ROOT, name("a")), None);
        assert_eq!(table.path(10), None);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn exchange_with_hard_links() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("d"), 2);
        table.lookup(ROOT, name("a"), 10);
        table.lookup(2, name("b"), 10);
        table.lookup(ROOT, name("c"), 11);
        table.lookup(2, name("e"), 11);

        table.exchange(2, name("b"), ROOT, name("c"));
        assert_eq!(table.child(ROOT, name("c")), Some(10));
        assert_eq!(table.child(2, name("b")), Some(11));
        assert_eq!(table.path(10), Some(PathBuf::from("c")));
        assert_eq!(table.path(11), Some(PathBuf::from("d/e")));
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(2, 1, &[(ROOT, "d")]),
                record(10, 2, &[(ROOT, "c"), (ROOT, "a")]),
                record(11, 2, &[(2, "e"), (2, "b")]),
            ],
        );
    }

    #[test]
    fn exchange_with_unknown_name_moves() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 10);
        table.exchange(ROOT, name("unknown"), ROOT, name("a"));
        assert_eq!(table.child(ROOT, name("a")), None);
        assert_eq!(table.child(ROOT, name("unknown")), Some(10));
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(10, 2, &[(ROOT, "b"), (ROOT, "unknown")]),
            ],
        );
    }

    #[test]
    fn encoding_has_fixed_layout() {
        let long = "n".repeat(300);
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("dir"), 0x0102_0304_0506_0708);
        table.lookup(0x0102_0304_0506_0708, name(&long), 11);
        table.lookup(ROOT, name("link"), 11);
        table.lookup(ROOT, name("link"), 11);

        let encoded = table.encode();
        let long_record = record(11, 3, &[(ROOT, "link"), (0x0102_0304_0506_0708, &long)]);
        assert_records(
            &encoded,
            &[
                record(ROOT, 1, &[]),
                record(0x0102_0304_0506_0708, 1, &[(ROOT, "dir")]),
                long_record.clone(),
            ],
        );
        // The layout spelled out once, so that the helper above cannot drift along with it.
        let mut spelled = vec![11, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0];
        spelled.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 4, 0]);
        spelled.extend_from_slice(b"link");
        spelled.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1, 0x2c, 0x01]);
        spelled.extend_from_slice(long.as_bytes());
        assert_eq!(long_record, spelled);

        let decoded = InodeTable::decode(&encoded).expect("decodes");
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded.path(11), Some(PathBuf::from("link")));
        assert_eq!(decoded.child(0x0102_0304_0506_0708, name(&long)), Some(11));
        assert_records(
            &decoded.encode(),
            &[
                record(ROOT, 1, &[]),
                record(0x0102_0304_0506_0708, 1, &[(ROOT, "dir")]),
                long_record,
            ],
        );
    }

    #[test]
    fn decode_rejects_cut_records() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 10);
        let encoded = table.encode();
        let root_len = record(ROOT, 1, &[]).len();
        let node_len = record(10, 2, &[(ROOT, "b"), (ROOT, "a")]).len();
        assert_eq!(encoded.len(), root_len + node_len);
        let first_len = if encoded.starts_with(&ROOT.to_le_bytes()) {
            root_len
        } else {
            node_len
        };

        for cut in 0..=encoded.len() {
            let at_boundary = [0, first_len, encoded.len()].contains(&cut);
            let decoded = InodeTable::decode(&encoded[..cut]);
            assert_eq!(decoded.is_some(), at_boundary, "cut at {cut}");
        }
    }

    #[test]
    fn decode_replaces_root_and_keeps_learned_nodes() {
        let mut table = InodeTable::new();
        table.learn(ROOT, name("a"), 10);
        let decoded = InodeTable::decode(&table.encode()).expect("decodes");
        assert_eq!(decoded.child(ROOT, name("a")), Some(10));
        assert_records(
            &decoded.encode(),
            &[record(ROOT, 1, &[]), record(10, 0, &[(ROOT, "a")])],
        );
        assert!(InodeTable::decode(&[]).is_some_and(|empty| empty.len() == 1));
    }

    #[test]
    fn path_depth_is_limited() {
        let mut table = InodeTable::new();
        let mut parent = ROOT;
        for id in 2..4098 {
            table.lookup(parent, name("d"), id);
            parent = id;
        }
        let path = table.path(4097).expect("4096 names deep");
        assert_eq!(path.components().count(), 4096);
        table.lookup(4097, name("d"), 4098);
        assert_eq!(table.path(4098), None);

        table.lookup(21, name("loop"), 20);
        assert_eq!(table.path(21), None);
    }
}
