//! The projects one `prenv serve` or `prenv watch` acts for: one config per project, from
//! `--config` files and the `*.toml` files of a `--config-dir`, checked to name each project and
//! each application repository once, so no delivery or object could belong to two of them.

use std::path::{Path, PathBuf};

use crate::adapters::fs;
use crate::error::{Error, Result};
use crate::model::config::Config;

/// A project's config and the file it came from (for messages).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    pub config: Config,
}

/// The config files of `dir` (see [`fs::config_files_in`]).
pub fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    fs::config_files_in(dir)
}

/// Reads every config of `paths` and checks them together.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Loaded>> {
    let mut loaded = Vec::new();
    for path in paths {
        if loaded.iter().any(|l: &Loaded| l.path == *path) {
            continue;
        }
        loaded.push(Loaded {
            path: path.clone(),
            config: fs::load_config(path)?,
        });
    }
    check(&loaded)?;
    Ok(loaded)
}

/// Each project once, and each application repository once (compared case-insensitively, as
/// GitHub compares names): a webhook delivery and a cluster object must each have one owner.
pub fn check(loaded: &[Loaded]) -> Result<()> {
    for (i, a) in loaded.iter().enumerate() {
        for b in &loaded[..i] {
            let clash = |what: &str, value: &str| Error::Config {
                path: a.path.display().to_string(),
                message: format!(
                    "{what} {value:?} is also in {}: one serve or watch acts for each {} once; remove one of the two files, or give each its own",
                    b.path.display(),
                    if what == "project_id" { "project" } else { "repository" }
                ),
            };
            if a.config.project_id == b.config.project_id {
                return Err(clash("project_id", &a.config.project_id));
            }
            if let (Some(x), Some(y)) = (&a.config.github.repository, &b.config.github.repository)
                && x.eq_ignore_ascii_case(y)
            {
                return Err(clash("github.repository", x));
            }
        }
    }
    Ok(())
}

/// The environment variable of `project`'s own webhook secret: `PRENV_WEBHOOK_SECRET_` and the
/// project id in upper case with `-` as `_` (`shop-api` → `PRENV_WEBHOOK_SECRET_SHOP_API`).
pub fn secret_var(project: &str) -> String {
    format!(
        "{SECRET_VAR}_{}",
        project
            .to_ascii_uppercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    )
}

/// The webhook secret every project shares unless it has its own.
pub const SECRET_VAR: &str = "PRENV_WEBHOOK_SECRET";

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, project: &str, repository: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "project_id = \"{project}\"\ndomain = \"p.example.com\"\nimage = \"r/i\"\nengine = \"flux\"\n[github]\nrepository = \"{repository}\"\n"
            ),
        )
        .unwrap();
        path
    }

    #[test]
    fn a_config_directory_gives_its_toml_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "shop.toml", "shop", "acme/shop");
        write(dir.path(), "blog.toml", "blog", "acme/blog");
        std::fs::write(dir.path().join("README.md"), "not a config").unwrap();
        std::fs::write(dir.path().join(".hidden.toml"), "not read").unwrap();
        let files = files_in(dir.path()).unwrap();
        let names: Vec<_> = files.iter().map(|p| p.file_name().unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["blog.toml", "shop.toml"]);
        let loaded = load(&files).unwrap();
        assert_eq!(loaded[0].config.project_id, "blog");
    }

    #[test]
    fn an_empty_config_directory_is_an_error_saying_what_to_put_there() {
        let dir = tempfile::tempdir().unwrap();
        let e = files_in(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no *.toml file"), "{e}");
    }

    #[test]
    fn a_project_or_repository_named_twice_is_an_error_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let shop = write(dir.path(), "shop.toml", "shop", "acme/shop");
        let again = write(dir.path(), "shop-again.toml", "shop", "acme/other");
        let e = load(&[shop.clone(), again.clone()]).unwrap_err().to_string();
        assert!(
            e.contains("project_id \"shop\"") && e.contains("shop.toml") && e.contains("shop-again.toml"),
            "{e}"
        );
        let blog = write(dir.path(), "blog.toml", "blog", "ACME/Shop");
        let e = load(&[shop, blog]).unwrap_err().to_string();
        assert!(
            e.contains("github.repository \"ACME/Shop\"") && e.contains("shop.toml") && e.contains("blog.toml"),
            "{e}"
        );
    }

    #[test]
    fn each_project_has_its_own_secret_variable() {
        assert_eq!(secret_var("shop-api"), "PRENV_WEBHOOK_SECRET_SHOP_API");
    }
}
