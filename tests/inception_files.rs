//! Finding and fetching the FID Inception weights (`dit::quality::inception_files`) against a
//! local HTTP server: a file named as torch.hub names it (`name-<sha256 prefix>.pth`) served
//! intact, altered, cut short, or not at all. The published file cannot be fetched here, so the
//! served one is any file whose name carries its own hash's prefix; the published name's prefix
//! is checked the same way.

mod common;

use std::path::Path;

use common::http::{unreachable_url, Serve, Server};
use common::names;
use dit::download::{hub_hash_prefix, sha256_file};
use dit::quality::inception_files::{folder_from, locate_in, locate_named, DEFAULT_URL, DIR_VAR, FILE};

/// A served folder holding one file named after its own hash, and that name.
fn served_file(root: &Path) -> String {
    let tmp = root.join("bytes");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&tmp, &bytes).unwrap();
    let name = format!("weights-{}.pth", &sha256_file(&tmp).unwrap()[..8]);
    std::fs::rename(&tmp, root.join(&name)).unwrap();
    name
}

fn one_line(err: anyhow::Error) -> String {
    let text = format!("{err:#}");
    assert!(!text.contains('\n'), "not one line: {text}");
    text
}

#[test]
fn the_published_name_carries_the_prefix_torch_hub_checks() {
    assert_eq!(hub_hash_prefix(FILE), Some("6726825d"));
    assert!(DEFAULT_URL.starts_with("https://github.com/mseitzer/pytorch-fid/releases/"));
}

#[test]
fn an_intact_download_lands_and_a_present_file_is_used_as_it_is() {
    let (root, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let name = served_file(root.path());
    let server = Server::start(root.path().to_path_buf(), Serve::Intact);
    let folder = dest.path().join("inception");
    let got = locate_named(&folder, &server.url, &name).unwrap();
    assert_eq!(got, folder.join(&name));
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(root.path().join(&name)).unwrap());
    assert_eq!(names(&folder), vec![name.as_str()]);
    assert_eq!(server.requests(), 1);
    // Present: used as it is, without a request (as torch.hub uses its cache), even when its
    // bytes are not those of the name's hash (a user's own copy is theirs to vouch for).
    std::fs::write(&got, b"a user's copy").unwrap();
    assert_eq!(locate_named(&folder, &server.url, &name).unwrap(), got);
    std::fs::write(folder.join(FILE), b"placed by hand").unwrap();
    assert_eq!(locate_in(&folder, &unreachable_url()).unwrap(), folder.join(FILE));
    assert_eq!(server.requests(), 1);
}

#[test]
fn an_altered_or_cut_short_download_is_refused_and_nothing_is_kept() {
    for mode in [Serve::Altered, Serve::CutShort] {
        let (root, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let name = served_file(root.path());
        let server = Server::start(root.path().to_path_buf(), mode);
        let err = one_line(locate_named(dest.path(), &server.url, &name).unwrap_err());
        let prefix = &name["weights-".len().."weights-".len() + 8];
        assert!(err.contains(&format!("{}/{name}", server.url)), "{err}");
        assert!(err.contains(&format!("a sha256 starting {prefix}")), "{err}");
        assert!(err.contains(&dest.path().display().to_string()), "{err}");
        assert_eq!(names(dest.path()), Vec::<String>::new(), "left behind after {err}");
    }
}

#[test]
fn offline_one_line_says_the_url_and_where_to_put_the_file() {
    let dest = tempfile::tempdir().unwrap();
    let url = unreachable_url();
    let err = one_line(locate_in(dest.path(), &url).unwrap_err());
    for part in [
        format!("{url}/{FILE}"),
        format!("put {FILE} with a sha256 starting 6726825d into {}", dest.path().display()),
    ] {
        assert!(err.contains(&part), "{part:?} not in: {err}");
    }
    assert_eq!(names(dest.path()), Vec::<String>::new());
}

#[test]
fn the_folder_is_the_flag_then_the_variable_then_the_cache() {
    let env = |vars: &'static [(&str, &str)]| {
        move |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.into())
    };
    let all: &'static [(&str, &str)] =
        &[(DIR_VAR, "/env/inc"), ("XDG_CACHE_HOME", "/xdg"), ("HOME", "/home/u")];
    assert_eq!(folder_from(Some(Path::new("/given")), env(all)).unwrap(), Path::new("/given"));
    assert_eq!(folder_from(None, env(all)).unwrap(), Path::new("/env/inc"));
    assert_eq!(folder_from(None, env(&all[1..])).unwrap(), Path::new("/xdg/dit/inception"));
    assert_eq!(folder_from(None, env(&all[2..])).unwrap(), Path::new("/home/u/.cache/dit/inception"));
    let err = one_line(folder_from(None, env(&[])).unwrap_err());
    assert!(err.contains("--inception-dir") && err.contains(DIR_VAR), "{err}");
}
