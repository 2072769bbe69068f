//! The on-disk and in-RAM contract between the image builder, init and the appliance.

use crate::gpt::{Guid, TYPE_ESP, TYPE_LINUX_DATA};

/// GPT name of the EFI System Partition.
pub const ESP_LABEL: &str = "CAIRN-ESP";
/// GPT name of the data partition (all persistent state).
pub const DATA_LABEL: &str = "CAIRN-DATA";
/// ext4 volume label of the data partition.
pub const DATA_FS_LABEL: &str = "cairn-data";
/// Partition type of the ESP.
pub const ESP_TYPE: Guid = TYPE_ESP;
/// Partition type of the data partition.
pub const DATA_TYPE: Guid = TYPE_LINUX_DATA;

/// Where init mounts the ESP (read-only).
pub const BOOT_MOUNT: &str = "/boot";
/// Where init mounts the data partition (read-write).
pub const DATA_MOUNT: &str = "/data";
/// Where init mounts the model store partition (read-only), when the image has one.
pub const MODELS_MOUNT: &str = "/models";
/// GPT name of the model store partition (read-only ext4, between the ESP and the data
/// partition; one folder per model, as `cairn_models::store` lays them out).
pub const MODELS_LABEL: &str = "CAIRN-MODELS";
/// Partition type of the model store partition.
pub const MODELS_TYPE: Guid = TYPE_LINUX_DATA;
/// Runtime state shared by init and the appliance (tmpfs).
pub const RUN_DIR: &str = "/run/cairn";
/// Boot facts init publishes for the appliance (JSON, see `bootinfo`).
pub const BOOT_INFO: &str = "/run/cairn/boot.json";
/// Writable stand-in for `/data` when the data partition cannot be mounted.
pub const VOLATILE_DATA: &str = "/run/cairn/volatile";
/// The appliance binary.
pub const APPLIANCE_BIN: &str = "/bin/cairn";
/// The user the appliance runs as (no name: the image has no user database).
pub const APPLIANCE_UID: u32 = 900;
/// The appliance's group; it may also read the ESP.
pub const APPLIANCE_GID: u32 = 900;
/// The entry of the data directory that stays init's (root's): the random seed.
pub const INIT_PRIVATE: &str = ".cairn";
/// Config file on the ESP (editable on any computer).
pub const ESP_CONFIG: &str = "/boot/cairn.toml";
/// Config file on the data partition (written by the console; wins over the ESP's).
pub const DATA_CONFIG: &str = "/data/etc/cairn.toml";
/// Build facts baked into the initramfs by the image builder.
pub const BUILD_INFO: &str = "/etc/cairn/build.json";
/// Environment variable carrying the file descriptor of init's control socket.
pub const CONTROL_FD_ENV: &str = "CAIRN_CONTROL_FD";
/// The kernel's module helper. Not the kernel's default `/sbin/modprobe`: requests made before
/// init runs would each exec init; init registers this path once it is ready to serve them.
pub const MODPROBE_HELPER: &str = "/usr/lib/cairn/modprobe";
/// Port the appliance's HTTPS server listens on in the image.
pub const HTTPS_PORT: u16 = 443;
/// Console line printed when the appliance reports ready (tests wait for it).
pub const READY_MARKER: &str = "cairn: appliance ready";
