//! The per-VM application menu folder (XDG Desktop Menu spec): a `.directory` file naming the
//! folder and a merged menu file that puts every entry carrying the VM's category in it.

use super::icon::xml_escape;
use super::keyfile::KeyFile;

/// The category every host entry of VM `vm` carries, which the VM's menu folder includes.
pub fn vm_category(vm: &str) -> String {
    format!("X-vmsilo-{vm}")
}

/// Base name of the VM's `.directory` file, menu file and folder icon.
pub fn folder_id(vm: &str) -> String {
    format!("vmsilo-{vm}")
}

/// The `.directory` file for `share/desktop-directories/`.
pub fn directory_file(vm: &str, icon_name: &str) -> String {
    let mut kf = KeyFile::default();
    kf.group("Desktop Entry")
        .set("Type", "Directory")
        .set("Version", "1.4")
        .set("Name", &format!("{vm} VM"))
        .set("Comment", &format!("Applications running in the {vm} VM"))
        .set("Icon", icon_name);
    kf.render()
}

/// The merged menu file for `etc/xdg/menus/applications-merged/`.
pub fn menu_file(vm: &str) -> String {
    let id = xml_escape(&folder_id(vm));
    let category = xml_escape(&vm_category(vm));
    format!(
        "<!DOCTYPE Menu PUBLIC \"-//freedesktop//DTD Menu 1.0//EN\"\n \
         \"http://www.freedesktop.org/standards/menu-spec/1.0/menu.dtd\">\n\
         <Menu>\n  <Name>Applications</Name>\n  <Menu>\n    <Name>{id}</Name>\n    \
         <Directory>{id}.directory</Directory>\n    <Include>\n      \
         <Category>{category}</Category>\n    </Include>\n  </Menu>\n</Menu>\n"
    )
}
