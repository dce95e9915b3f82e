/// The version of pvfs, printed by every command's `--version`. It is written only here:
/// scripts/package reads this line for the Debian package's version.
public let pvfsVersion = "0.1.0"
