import CXen
import PVFS9P
