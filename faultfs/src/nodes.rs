//! The node table: FUSE node ids and the backing path each one was last seen at.
//!
//! fuser sends a node's id as its `st_ino`, so ids are the backing inode numbers, which keeps
//! `st_ino` stable across lookups and equal to `d_ino` in listings. The backing root takes
//! id 1 (FUSE_ROOT_ID), and a backing inode numbered 1 takes the root's number instead.
//!
//! NOTE: ids are unique only while the backing tree is one filesystem. Inodes of a filesystem
//! mounted inside the backing directory can collide with those of the outer one.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use fuser::FileType;

pub const ROOT_ID: u64 = 1;

struct Node {
    parent: u64,
    name: OsString,
    kind: FileType,
    /// Lookups the kernel holds, released by forget.
    lookups: u64,
    /// False once the name this node was last seen at is removed. Path-based operations
    /// then fail with ENOENT until a lookup finds the node under another name.
    linked: bool,
    /// False once the last link of the backing inode is removed, so a new file that reuses
    /// the inode number gets a new generation.
    alive: bool,
    generation: u64,
}

pub struct Nodes {
    root_ino: u64,
    nodes: HashMap<u64, Node>,
}

impl Nodes {
    /// Creates the table with the root, whose backing inode number is `root_ino`.
    pub fn new(root_ino: u64) -> Nodes {
        let root = Node {
            parent: ROOT_ID,
            name: OsString::new(),
            kind: FileType::Directory,
            lookups: 1,
            linked: true,
            alive: true,
            generation: 0,
        };
        Nodes {
            root_ino,
            nodes: HashMap::from([(ROOT_ID, root)]),
        }
    }

    /// Maps a backing inode number to a node id.
    pub fn id_of_ino(&self, ino: u64) -> u64 {
        if ino == self.root_ino {
            ROOT_ID
        } else if ino == ROOT_ID {
            self.root_ino
        } else {
            ino
        }
    }

    /// Returns the node's path relative to the backing root ("" for the root).
    ///
    /// With `require_linked`, returns `None` when the node or a directory above it was
    /// removed. Without it, returns the last path the node was seen at, which rule matching
    /// and logs use to name the node.
    pub fn path(&self, id: u64, require_linked: bool) -> Option<PathBuf> {
        let mut names = Vec::new();
        let mut current = id;
        while current != ROOT_ID {
            let node = self.nodes.get(&current)?;
            if require_linked && !node.linked {
                return None;
            }
            names.push(node.name.as_os_str());
            current = node.parent;
            if names.len() > 4096 {
                // A cycle can only come from a bug; refuse the path rather than loop forever.
                return None;
            }
        }
        Some(names.iter().rev().collect())
    }

    /// Records a lookup reply for the backing inode `ino` found as `name` in `parent`, and
    /// returns the node id and generation to send.
    pub fn remember(&mut self, parent: u64, name: &OsStr, ino: u64, kind: FileType) -> (u64, u64) {
        let id = self.id_of_ino(ino);
        if id == ROOT_ID {
            return (ROOT_ID, 0);
        }
        match self.nodes.get_mut(&id) {
            Some(node) if node.alive && node.kind == kind => {
                node.parent = parent;
                node.name = name.to_os_string();
                node.linked = true;
                node.lookups += 1;
                (id, node.generation)
            }
            Some(node) => {
                // The inode number was reused by a new file while the kernel still has the
                // old one cached. A new generation makes the kernel drop its stale inode.
                node.parent = parent;
                node.name = name.to_os_string();
                node.kind = kind;
                node.linked = true;
                node.alive = true;
                node.lookups += 1;
                node.generation += 1;
                (id, node.generation)
            }
            None => {
                let node = Node {
                    parent,
                    name: name.to_os_string(),
                    kind,
                    lookups: 1,
                    linked: true,
                    alive: true,
                    generation: 0,
                };
                self.nodes.insert(id, node);
                (id, 0)
            }
        }
    }

    /// Releases `count` lookups of a node; the node is dropped when none remain.
    pub fn forget(&mut self, id: u64, count: u64) {
        if id == ROOT_ID {
            return;
        }
        if let Some(node) = self.nodes.get_mut(&id) {
            node.lookups = node.lookups.saturating_sub(count);
            if node.lookups == 0 {
                self.nodes.remove(&id);
            }
        }
    }

    /// Records that `name` in `parent`, backed by inode `ino`, was removed. `last_link` is
    /// true when the inode itself is gone (it had one link, or was a directory).
    pub fn removed(&mut self, parent: u64, name: &OsStr, ino: u64, last_link: bool) {
        let id = self.id_of_ino(ino);
        if let Some(node) = self.nodes.get_mut(&id) {
            if node.parent == parent && node.name == name {
                node.linked = false;
            }
            if last_link {
                node.linked = false;
                node.alive = false;
            }
        }
    }

    /// Records that the backing inode `ino` now sits at `name` in `parent`.
    pub fn moved(&mut self, ino: u64, parent: u64, name: &OsStr) {
        let id = self.id_of_ino(ino);
        if let Some(node) = self.nodes.get_mut(&id) {
            node.parent = parent;
            node.name = name.to_os_string();
            node.linked = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_directory_renames() {
        let mut nodes = Nodes::new(500);
        let (dir, _) = nodes.remember(ROOT_ID, OsStr::new("a"), 10, FileType::Directory);
        let (file, _) = nodes.remember(dir, OsStr::new("f"), 11, FileType::RegularFile);
        assert_eq!(nodes.path(file, true), Some(PathBuf::from("a/f")));

        let (other, _) = nodes.remember(ROOT_ID, OsStr::new("b"), 12, FileType::Directory);
        nodes.moved(10, other, OsStr::new("c"));
        assert_eq!(nodes.path(file, true), Some(PathBuf::from("b/c/f")));
        assert_eq!(nodes.path(ROOT_ID, true), Some(PathBuf::new()));
    }

    #[test]
    fn root_and_inode_one_swap_ids() {
        let mut nodes = Nodes::new(500);
        assert_eq!(nodes.id_of_ino(500), ROOT_ID);
        assert_eq!(nodes.id_of_ino(1), 500);
        let (id, _) = nodes.remember(ROOT_ID, OsStr::new("x"), 1, FileType::RegularFile);
        assert_eq!(id, 500);
        assert_eq!(nodes.path(500, true), Some(PathBuf::from("x")));
    }

    #[test]
    fn removed_name_unlinks_node() {
        let mut nodes = Nodes::new(500);
        let (id, _) = nodes.remember(ROOT_ID, OsStr::new("f"), 20, FileType::RegularFile);
        nodes.removed(ROOT_ID, OsStr::new("f"), 20, false);
        assert_eq!(nodes.path(id, true), None);
        assert_eq!(nodes.path(id, false), Some(PathBuf::from("f")));

        let (again, generation) =
            nodes.remember(ROOT_ID, OsStr::new("g"), 20, FileType::RegularFile);
        assert_eq!((again, generation), (id, 0));
        assert_eq!(nodes.path(id, true), Some(PathBuf::from("g")));
    }

    #[test]
    fn reused_inode_gets_new_generation() {
        let mut nodes = Nodes::new(500);
        let (id, _) = nodes.remember(ROOT_ID, OsStr::new("f"), 30, FileType::RegularFile);
        nodes.removed(ROOT_ID, OsStr::new("f"), 30, true);
        let (again, generation) = nodes.remember(ROOT_ID, OsStr::new("d"), 30, FileType::Directory);
        assert_eq!(again, id);
        assert_eq!(generation, 1);
    }

    #[test]
    fn forget_drops_node() {
        let mut nodes = Nodes::new(500);
        let (id, _) = nodes.remember(ROOT_ID, OsStr::new("f"), 40, FileType::RegularFile);
        nodes.remember(ROOT_ID, OsStr::new("f"), 40, FileType::RegularFile);
        nodes.forget(id, 1);
        assert!(nodes.path(id, true).is_some());
        nodes.forget(id, 1);
        assert!(nodes.path(id, true).is_none());
    }
}
