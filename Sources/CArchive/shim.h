// libarchive (libarchive-dev): reads the tar layers of container images, compressed or not.
#include <archive.h>
#include <archive_entry.h>
