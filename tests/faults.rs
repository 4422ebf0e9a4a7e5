//! The fault suite: what credsync does when its surroundings misbehave.
//! A hostile or broken snapshot repository, a frozen AWS endpoint, a full
//! disk, a Kubernetes API that fails or hangs, processes killed half way.
//! Each test states what a user sees and checks that nothing was lost,
//! half-written or leaked.

mod support;

use std::path::Path;

use support::snap::Snap;
use support::path_str;

/// Every regular file under `dir`, with its contents.
fn files_under(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.extend(files_under(&path));
        } else if meta.is_file() {
            out.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap_or_default(),
            ));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_link_in_the_work_tree_never_leads_a_write_outside_the_repository() {
    let s = Snap::start(&["ns"]).await;
    s.env.put("ns/app/key", "link-value-one");
    s.env.put("ns/web/key", "link-value-web");
    assert_eq!(s.run(&["sync"]).code, 0);
    let outside = s.env.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("precious.yaml"), "precious\n").unwrap();
    let before = files_under(&outside);

    // A link at a Secret's file, then one at the cluster's directory.
    let file = s.repo.join("test/ns/app.yaml");
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(outside.join("precious.yaml"), &file).unwrap();
    s.env.put("ns/app/key", "link-value-two");
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(files_under(&outside), before, "nothing written outside");
    assert!(run.stderr.contains("symbolic link"), "{}", run.stderr);
    assert!(!std::fs::symlink_metadata(&file).unwrap().is_symlink());

    let cluster_dir = s.repo.join("test");
    std::fs::rename(&cluster_dir, s.env.dir.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(&outside, &cluster_dir).unwrap();
    s.env.put("ns/web/key", "link-value-web-two");
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(files_under(&outside), before, "nothing written outside");
    assert!(run.stderr.contains("symbolic link"), "{}", run.stderr);
    assert!(!std::fs::symlink_metadata(&cluster_dir).unwrap().is_symlink());
    // The work tree shows the committed snapshot again.
    let out = s.env.sops(&s.identity, &["-d", path_str(&s.repo.join("test/ns/web.yaml"))]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("web"));
}
