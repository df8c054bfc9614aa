package com.example.bank;

import java.math.BigDecimal;
import java.math.RoundingMode;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Objects;

/**
 * A simple bank account that keeps its balance in a {@link BigDecimal} and records
 * every deposit and withdrawal as a {@link Transaction}.
 */
public class BankAccount {

    private final String id;
    private final String owner;
    private BigDecimal balance = BigDecimal.ZERO;
    private final List<Transaction> history = new ArrayList<>();

    public BankAccount(String id, String owner) {
        this.id = Objects.requireNonNull(id, "id");
        this.owner = Objects.requireNonNull(owner, "owner");
    }

    public String getId() {
        return id;
    }

    public String getOwner() {
        return owner;
    }

    public BigDecimal getBalance() {
        return balance;
    }

    public List<Transaction> getHistory() {
        return Collections.unmodifiableList(history);
    }

    /** Adds money to the account. The amount must be positive. */
    public void deposit(BigDecimal amount) {
        requirePositive(amount);
        balance = balance.add(amount);
        history.add(new Transaction(Transaction.Kind.DEPOSIT, amount, balance));
    }

    /**
     * Takes money out of the account.
     *
     * @throws InsufficientFundsException if the balance is lower than the amount
     */
    public void withdraw(BigDecimal amount) throws InsufficientFundsException {
        requirePositive(amount);
        if (balance.compareTo(amount) < 0) {
            throw new InsufficientFundsException(id, balance, amount);
        }
        balance = balance.subtract(amount);
        history.add(new Transaction(Transaction.Kind.WITHDRAWAL, amount, balance));
    }

    /** Moves money from this account to another one, atomically from the caller's point of view. */
    public void transferTo(BankAccount target, BigDecimal amount) throws InsufficientFundsException {
        Objects.requireNonNull(target, "target");
        if (target == this) {
            throw new IllegalArgumentException("cannot transfer to the same account");
        }
        withdraw(amount);
        target.deposit(amount);
    }

    /** Adds monthly interest at the given yearly rate, e.g. 0.03 for 3 %. */
    public BigDecimal applyMonthlyInterest(BigDecimal yearlyRate) {
        BigDecimal interest = balance
                .multiply(yearlyRate)
                .divide(BigDecimal.valueOf(12), 2, RoundingMode.HALF_EVEN);
        if (interest.signum() > 0) {
            deposit(interest);
        }
        return interest;
    }

    private static void requirePositive(BigDecimal amount) {
        if (amount == null || amount.signum() <= 0) {
            throw new IllegalArgumentException("amount must be positive: " + amount);
        }
    }

    @Override
    public String toString() {
        return "BankAccount{id=" + id + ", owner=" + owner + ", balance=" + balance + "}";
    }
}
