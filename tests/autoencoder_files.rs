//! Finding and fetching the autoencoder weights against a local HTTP server that serves the
//! real TAEF2 files from `../shared/models/taef2`, intact, altered or cut short.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use common::http::{unreachable_url, Serve, Server};
use common::names;

use dit::autoencoder::files::{self, fetch_file, locate, locate_in, pinned_sha256, sha256_file, Located};

const ENCODER: &str = "taef2_encoder.pth";
const DECODER: &str = "taef2_decoder.pth";

/// One test at a time: one of them changes environment variables, which the others' code
/// reads (proxy settings, the terminal), and the variables are global to the process.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The published TAEF2 files, read in place where build.rs found them (beside the checkout, or
/// the machine's shared folder for a clone elsewhere).
fn taef2_folder() -> PathBuf {
    let dir = match option_env!("DIT_TAEF2") {
        Some(found) => PathBuf::from(found),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/taef2"),
    };
    assert!(dir.join(ENCODER).is_file(), "the TAEF2 files are not in {}", dir.display());
    dir
}

/// The error as the binaries print it, checked to be one line.
fn one_line(err: anyhow::Error) -> String {
    let text = format!("{err:#}");
    assert!(!text.contains('\n'), "not one line: {text}");
    assert_eq!(err.chain().count(), 1, "a chain prints over several lines with {{:?}}: {text}");
    text
}

fn assert_names(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} is not in: {text}");
    }
}

#[test]
fn the_pinned_sums_are_those_of_the_published_files() {
    let _serial = serial();
    let shared = taef2_folder();
    for file in [ENCODER, DECODER] {
        assert_eq!(sha256_file(&shared.join(file)).unwrap(), pinned_sha256(file).unwrap(), "{file}");
    }
}

#[test]
fn an_intact_download_lands_in_the_folder_and_is_not_fetched_again() {
    let _serial = serial();
    let shared = taef2_folder();
    let server = Server::start(shared.clone(), Serve::Intact);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("not/yet/there");

    let path = fetch_file(&server.url, ENCODER, pinned_sha256(ENCODER).unwrap(), &dir).unwrap();
    assert_eq!(path, dir.join(ENCODER));
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(shared.join(ENCODER)).unwrap());
    assert_eq!(names(&dir), [ENCODER], "no temporary left");

    // The decoder is fetched, the encoder already there is checked and kept.
    let found = locate_in("taef2", &dir, &format!("{}/", server.url)).unwrap();
    assert_eq!(server.requests(), 2);
    let expected = Located {
        encoder: dir.join(ENCODER),
        decoder: dir.join(DECODER),
        encoder_sha256: pinned_sha256(ENCODER).unwrap().into(),
        decoder_sha256: pinned_sha256(DECODER).unwrap().into(),
    };
    assert_eq!(found, expected);
    assert_eq!(sha256_file(&found.decoder).unwrap(), found.decoder_sha256);
    assert_eq!(names(&dir), [DECODER, ENCODER]);

    // Both present: no request at all.
    assert_eq!(locate_in("taef2", &dir, &server.url).unwrap(), expected);
    assert_eq!(server.requests(), 2);
}

#[test]
fn an_altered_download_is_refused_and_leaves_nothing() {
    let _serial = serial();
    let server = Server::start(taef2_folder(), Serve::Altered);
    let tmp = tempfile::tempdir().unwrap();
    let sum = pinned_sha256(DECODER).unwrap();

    let err = one_line(fetch_file(&server.url, DECODER, sum, tmp.path()).unwrap_err());
    let url = format!("{}/{DECODER}", server.url);
    assert_names(&err, &["refused", &url, sum, &tmp.path().display().to_string()]);
    assert_eq!(names(tmp.path()), Vec::<String>::new(), "neither the file nor its temporary");

    // Through the lookup too: the first file refused stops it.
    let err = one_line(locate_in("taef2", tmp.path(), &server.url).unwrap_err());
    assert_names(&err, &["refused", pinned_sha256(ENCODER).unwrap()]);
    assert_eq!(names(tmp.path()), Vec::<String>::new());
}

#[test]
fn a_download_cut_short_is_refused_and_leaves_nothing() {
    let _serial = serial();
    let server = Server::start(taef2_folder(), Serve::CutShort);
    let tmp = tempfile::tempdir().unwrap();
    let sum = pinned_sha256(ENCODER).unwrap();

    let err = one_line(fetch_file(&server.url, ENCODER, sum, tmp.path()).unwrap_err());
    assert_names(&err, &[&format!("{}/{ENCODER}", server.url), sum, &tmp.path().display().to_string()]);
    assert_eq!(names(tmp.path()), Vec::<String>::new());
}

#[test]
fn an_unreachable_or_empty_server_is_one_line_naming_url_sum_and_folder() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let sum = pinned_sha256(ENCODER).unwrap();

    let url = unreachable_url();
    let err = one_line(fetch_file(&url, ENCODER, sum, &dir).unwrap_err());
    assert_names(&err, &["cannot download", &format!("{url}/{ENCODER}"), sum, &dir.display().to_string()]);
    assert_eq!(names(&dir), Vec::<String>::new());

    // A server without the file (a mirror missing it): 404.
    let empty = tempfile::tempdir().unwrap();
    let server = Server::start(empty.path().to_path_buf(), Serve::Intact);
    let err = one_line(locate_in("taef2", &dir, &server.url).unwrap_err());
    assert_names(&err, &["404", &format!("{}/{ENCODER}", server.url), sum, &dir.display().to_string()]);
    assert_eq!(names(&dir), Vec::<String>::new());
}

#[test]
fn a_present_pinned_file_with_another_sum_is_refused_not_used() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(ENCODER);
    std::fs::write(&path, b"not the weights").unwrap();
    let wrong = sha256_file(&path).unwrap();

    let err = one_line(locate_in("taef2", tmp.path(), &unreachable_url()).unwrap_err());
    assert_names(&err, &[&path.display().to_string(), &wrong, pinned_sha256(ENCODER).unwrap(), "delete it"]);
    assert_eq!(std::fs::read(&path).unwrap(), b"not the weights", "left for the user to look at");
}

#[test]
fn the_folder_is_the_explicit_one_then_the_variable_then_the_cache() {
    let _serial = serial();
    let server = Server::start(taef2_folder(), Serve::Intact);
    let tmp = tempfile::tempdir().unwrap();
    let (explicit, from_env, xdg) =
        (tmp.path().join("explicit"), tmp.path().join("env"), tmp.path().join("xdg"));
    let cache = xdg.join("dit/autoencoders");
    let saved: Vec<_> = [files::DIR_VAR, files::URL_VAR, "XDG_CACHE_HOME"]
        .into_iter()
        .map(|name| (name, std::env::var_os(name)))
        .collect();
    std::env::set_var(files::URL_VAR, &server.url);
    std::env::set_var(files::DIR_VAR, &from_env);
    std::env::set_var("XDG_CACHE_HOME", &xdg);

    let result = std::panic::catch_unwind(|| {
        assert_eq!(files::folder(Some(&explicit)).unwrap(), explicit);
        assert_eq!(files::folder(None).unwrap(), from_env);
        assert_eq!(files::base_url(), server.url);

        // Downloads go to the folder the lookup chose.
        assert_eq!(locate("taef2", Some(&explicit)).unwrap().encoder, explicit.join(ENCODER));
        assert_eq!(names(&explicit), [DECODER, ENCODER]);
        assert_eq!(locate("taef2", None).unwrap().decoder, from_env.join(DECODER));
        assert_eq!(names(&from_env), [DECODER, ENCODER]);

        std::env::set_var(files::DIR_VAR, "");
        assert_eq!(files::folder(None).unwrap(), cache);
        let found = locate("taef2", None).unwrap();
        assert_eq!((found.encoder, found.decoder), (cache.join(ENCODER), cache.join(DECODER)));
        assert_eq!(names(&cache), [DECODER, ENCODER]);
        assert_eq!(server.requests(), 6);
    });

    for (name, value) in saved {
        match value {
            Some(value) => std::env::set_var(name, value),
            None => std::env::remove_var(name),
        }
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
