import Foundation

extension NSCondition {
    /// Runs slow `work` (loading, opening, closing) with the lock released, while other threads
    /// wait on the mark the caller left under the lock ("loading", "closing"). Call with the lock
    /// held. On success the lock is held again on return, and the waiters are woken once the
    /// caller, having replaced the mark with the outcome, unlocks. On failure `withdraw` removes
    /// the mark under the lock, the waiters are woken, and the error is rethrown with the lock
    /// released.
    func whileUnlocked<T>(_ work: () throws -> T, ifFailed withdraw: () -> Void) rethrows -> T {
        unlock()
        let value: T
        do {
            value = try work()
        } catch {
            lock()
            withdraw()
            broadcast()
            unlock()
            throw error
        }
        lock()
        broadcast()
        return value
    }
}
