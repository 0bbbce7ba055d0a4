//! streamjob worker library.
