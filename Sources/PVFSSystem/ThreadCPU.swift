import CPVFSSystem

/// The calling thread's CPU clock and scheduling priority (Linux: nice is per thread).
public enum ThreadCPU {
    /// The calling thread's kernel id.
    public static var currentThreadID: Int32 { cpvfs_gettid() }

    /// CPU time the calling thread has used, in nanoseconds.
    public static var currentThreadNanoseconds: UInt64 { cpvfs_thread_cpu_nanoseconds() }

    /// Sets thread `threadID`'s nice value (-20...19), or with 20 its policy to SCHED_IDLE (a
    /// runnable thread of another policy preempts it at once); 0 on success, else the error
    /// number (raising a thread's priority again needs CAP_SYS_NICE or RLIMIT_NICE).
    public static func setNice(_ nice: Int32, thread threadID: Int32) -> Int32 {
        cpvfs_set_thread_nice(threadID, nice)
    }
}
